//! Sets `cfg(wsgate_postgres)` when `TEST_POSTGRES_URL` is set and
//! `cfg(wsgate_redis)` when `TEST_REDIS_URL` is: the integration tests that
//! need PostgreSQL or Redis are `ignore`d (reported skipped, not passed)
//! without them.

fn main() {
    for (var, cfg) in [
        ("TEST_POSTGRES_URL", "wsgate_postgres"),
        ("TEST_REDIS_URL", "wsgate_redis"),
    ] {
        println!("cargo::rustc-check-cfg=cfg({cfg})");
        println!("cargo::rerun-if-env-changed={var}");
        if std::env::var_os(var).is_some_and(|v| !v.is_empty()) {
            println!("cargo::rustc-cfg={cfg}");
        }
    }
}
