//! `schema.graphql` at the workspace root is the contract; it must equal what the code serves.
//! Regenerate with `cargo xtask schema`.

#[test]
fn schema_file_matches_code() {
    let config = cal_api::ApiConfig::new("irrelevant-for-sdl-irrelevant-for-sdl");
    let sdl = cal_api::build_schema(std::sync::Arc::new(config)).sdl();
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../schema.graphql");
    let file = std::fs::read_to_string(path).expect("schema.graphql exists at the workspace root");
    assert!(
        file == sdl,
        "schema.graphql is out of date with the code; run `cargo xtask schema` and review the diff"
    );
}
