//! Sets `cfg(wsgate_redis)` when `TEST_REDIS_URL` is set: the tests that
//! need Redis are `ignore`d (reported skipped, not passed) without it.

fn main() {
    println!("cargo::rustc-check-cfg=cfg(wsgate_redis)");
    println!("cargo::rerun-if-env-changed=TEST_REDIS_URL");
    if std::env::var_os("TEST_REDIS_URL").is_some_and(|v| !v.is_empty()) {
        println!("cargo::rustc-cfg=wsgate_redis");
    }
}
