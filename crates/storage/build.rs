//! Sets `cfg(wsgate_postgres)` when `TEST_POSTGRES_URL` is set: the
//! integration tests that need PostgreSQL are `ignore`d (reported skipped,
//! not passed) without it.

fn main() {
    println!("cargo::rustc-check-cfg=cfg(wsgate_postgres)");
    println!("cargo::rerun-if-env-changed=TEST_POSTGRES_URL");
    if std::env::var_os("TEST_POSTGRES_URL").is_some_and(|v| !v.is_empty()) {
        println!("cargo::rustc-cfg=wsgate_postgres");
    }
}
