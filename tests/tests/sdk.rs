//! The generated client as a Rust caller meets it: `Client::new` works with no setup, the
//! crate's quickstart (`client-sdk/examples/quickstart.rs`, also its documentation) runs
//! against a live server, and a conditional GET's 304 is a typed answer.
//! (One test, so that nothing else in this binary installs a TLS provider first.)

use client_sdk::{IfChanged, SendIfChanged as _, types::TaskCreate};
use integration_tests::{Backend, TestServer, token};
use reqwest::StatusCode;

#[path = "../../client-sdk/examples/quickstart.rs"]
#[allow(dead_code)]
mod quickstart;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sdk_works_as_documented() {
    let server = TestServer::start(Backend::Sqlite).await;

    // `Client::new` with nothing set up first: the generated constructor installs the provider.
    assert!(
        rustls::crypto::CryptoProvider::get_default().is_none(),
        "a provider came from elsewhere"
    );
    let plain = client_sdk::Client::new(&server.base_url);
    let health = plain.health().send().await.expect("Client::new sends requests");
    assert_eq!(health.status(), StatusCode::OK);
    assert!(rustls::crypto::CryptoProvider::get_default().is_some());

    quickstart::quickstart(&server.base_url, &token("quickstart-user")).await.expect("quickstart");
    let client = server.client("quickstart-user");
    assert_eq!(client.list_tasks().send().await.unwrap().len(), 1, "the quickstart's task");

    // Has it changed? Unchanged with the current tag; changed (with the new task) after a write.
    let created =
        client.create_task().body(TaskCreate::builder().title("watch me")).send().await.unwrap();
    let etag = created.headers()["etag"].to_str().unwrap().to_owned();
    match client.get_task().id(created.id).if_none_match(&etag).send_if_changed().await.unwrap() {
        IfChanged::Unchanged { etag: current } => {
            assert_eq!(current.as_deref(), Some(etag.as_str()))
        }
        other => panic!("expected unchanged, got {other:?}"),
    }
    client.toggle_task().id(created.id).send().await.unwrap();
    let path_user = client.get_user_task().user_id("quickstart-user").id(created.id);
    match path_user.if_none_match(&etag).send_if_changed().await.unwrap() {
        IfChanged::Changed(task) => assert!(task.completed),
        other => panic!("expected changed, got {other:?}"),
    }
    // Errors stay errors.
    let missing = client.get_task().id(987_654_321).if_none_match(&etag).send_if_changed().await;
    assert!(matches!(missing, Err(client_sdk::Error::ErrorResponse(p)) if p.status == 404));
}
