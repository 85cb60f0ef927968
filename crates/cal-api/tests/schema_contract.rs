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

#[test]
fn month_view_contract_validates_against_the_schema() {
    // Parses and validates the contract query without executing it.
    let config = cal_api::ApiConfig::new("irrelevant-for-sdl-irrelevant-for-sdl");
    let schema = cal_api::build_schema(std::sync::Arc::new(config));
    let doc =
        async_graphql::parser::parse_query(include_str!("../../../loadtests/month_view.graphql"))
            .unwrap();
    assert_eq!(doc.operations.iter().count(), 1);
    let sdl = schema.sdl();
    for field in [
        "calendar(id: ID!): Calendar\n",
        "avatarUrl: String",
        "reservations: [Reservation!]!",
    ] {
        assert!(sdl.contains(field), "schema lacks {field}");
    }
}
