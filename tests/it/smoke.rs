use crate::common::*;

#[tokio::test]
async fn harness_connects_a_seller() {
    let app = TestApp::spawn().await;
    let browser = app.signed_in_browser("acme", "u1").await;
    let callback = browser
        .connect_through("ATVPDKIKX0DER", "A1TESTSELLER")
        .await;
    assert_eq!(callback.status(), 303);
    let rows = connection_rows(&browser.page().await);
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].1, "A1TESTSELLER");
    assert_eq!(rows[0].2, "active");
}
