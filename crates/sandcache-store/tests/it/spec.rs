//! Store specs print as they parse.

use sandcache_store::StoreSpec;

#[test]
fn specs_display_round_trip() {
    for s in ["s3://bkt", "s3://bkt/p/q", "file:///tmp/x"] {
        assert_eq!(s.parse::<StoreSpec>().unwrap().to_string(), s);
    }
}
