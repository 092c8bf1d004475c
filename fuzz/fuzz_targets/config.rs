//! The configuration file: arbitrary TOML through figment, the typed
//! extraction and every validation rule, then the redacted print.
#![no_main]

use figment::providers::{Format, Toml};
use figment::Figment;
use libfuzzer_sys::fuzz_target;
use wsgate::config::Config;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let figment = Figment::new().merge(Toml::string(text));
    if let Ok(config) = Config::from_figment(&figment) {
        let printed = config.to_redacted_toml();
        // What `config print` shows is the same configuration again, when
        // it hides nothing (secrets and URLs with credentials are shown
        // redacted).
        if !printed.contains("redacted") {
            let again = Config::from_figment(&Figment::new().merge(Toml::string(&printed)));
            assert_eq!(again.ok(), Some(config), "config print differs: {printed}");
        }
    }
});
