//! Generates the client from `../openapi.json` at build time; no generated code is committed.

use std::{env, fs, path::Path};

use progenitor::{GenerationSettings, Generator, InterfaceStyle};

fn main() {
    let spec_path = "../openapi.json";
    println!("cargo:rerun-if-changed={spec_path}");
    // Progenitor leaves `application/problem+json` bodies untyped; as plain JSON, errors come back
    // as `Error::ErrorResponse` holding the decoded `Problem`.
    let text = fs::read_to_string(spec_path)
        .expect("read openapi.json")
        .replace("application/problem+json", "application/json");
    let spec: openapiv3::OpenAPI =
        serde_json::from_str(&text).expect("openapi.json is OpenAPI 3.0");
    let mut settings = GenerationSettings::default();
    settings.with_interface(InterfaceStyle::Builder);
    let mut generator = Generator::new(&settings);
    let tokens = generator.generate_tokens(&spec).expect("generate the client");
    let file = syn::parse2(tokens).expect("generated code parses");
    // reqwest is built without its default (C) crypto provider, so a bare
    // `reqwest::ClientBuilder::new().build()` would panic: `Client::new` gets a builder that has
    // rustls' pure-Rust `ring` provider installed first.
    let code = prettyplease::unparse(&file);
    let bare_builder = "reqwest::ClientBuilder::new()";
    assert!(code.contains(bare_builder), "progenitor's Client::new changed: revisit build.rs");
    let code = code.replace(bare_builder, "crate::client_builder_with_crypto_provider()");
    let out = Path::new(&env::var("OUT_DIR").unwrap()).join("codegen.rs");
    fs::write(out, code).expect("write the generated client");
}
