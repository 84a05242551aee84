//! The operator's console in headless Chromium against the real `postbote serve`
//! binary, as an operator uses it: sign in on the form, read the dashboard after a
//! real digest pass, search a subscriber, erase one through the confirmation step,
//! sign out; a wrong token is refused and then throttled; a form sent without its
//! CSRF token is refused. Every page is screenshotted at 1280 and 375 px, checked
//! by axe-core and has no console error (see [`Browser::check_page`]).

use serde_json::Value;

use crate::browser::{Browser, console_errors, console_serve};
use crate::harness::{Api, Backend, SmtpSink, TestDb, a_day_with_a_digest};

/// The sum of one column (0 = the first number after the day) of the dashboard's
/// table of the last 30 days, as the browser shows it.
async fn days_total(browser: &Browser, column: usize) -> u64 {
    let sum = browser
        .client
        .execute(
            "return [...document.querySelectorAll('section[aria-labelledby=days] tbody tr')]
               .reduce((n, row) => n + Number(row.querySelectorAll('td')[arguments[0]].textContent), 0);",
            vec![Value::from(column)],
        )
        .await
        .expect("read the table");
    sum.as_u64().expect("a number")
}

/// The number in the row `status` of the dashboard's readers-by-status table.
async fn readers(browser: &Browser, status: &str) -> String {
    let n = browser
        .client
        .execute(
            "const th = [...document.querySelectorAll('tbody th[scope=row]')]
               .find(th => th.textContent === arguments[0]);
             return th ? th.nextElementSibling.textContent : null;",
            vec![Value::from(status)],
        )
        .await
        .expect("read the table");
    n.as_str()
        .unwrap_or_else(|| panic!("no row {status}"))
        .to_owned()
}

/// The dashboard after [`a_day_with_a_digest`]: charts drawn, the readers by status,
/// the day's sign-ups, confirmation and digest in the table, an empty queue.
async fn the_dashboard_shows_the_day(browser: &Browser, shots: &str) {
    assert!(
        browser
            .find("figure.chart svg")
            .await
            .is_displayed()
            .await
            .unwrap(),
        "the charts are drawn"
    );
    assert_eq!(readers(browser, "confirmed").await, "1");
    assert_eq!(readers(browser, "pending").await, "1");
    assert_eq!(days_total(browser, 0).await, 2, "sign-ups");
    assert_eq!(days_total(browser, 1).await, 1, "confirmations");
    assert_eq!(days_total(browser, 6).await, 1, "digests sent");
    assert_eq!(browser.text("#queue-depth").await, "0");
    browser
        .check_page(&format!("{shots}/console-dashboard"))
        .await;
}

/// From the dashboard: searches `reader` by a prefix in other case, opens them.
async fn search(browser: &Browser, reader: &str, shots: &str) {
    browser
        .click_and_wait("a[href^='/admin/subscribers?']")
        .await;
    browser
        .check_page(&format!("{shots}/console-subscribers"))
        .await;
    browser.fill("#q", "BERL").await;
    browser.click_and_wait("form[role=search] button").await;
    let found = browser.text("main table tbody").await;
    assert!(found.contains(reader), "{found}");
    assert!(!found.contains("pending@"), "{found}");
    browser.click_and_wait("main table tbody a").await;
    assert_eq!(browser.text("#status").await, "confirmed");
    browser
        .check_page(&format!("{shots}/console-subscriber"))
        .await;
}

/// On the detail page: the unsubscribe form sent without its CSRF token (the
/// hidden field removed) is refused and changes nothing.
async fn a_form_without_its_csrf_token_is_refused(browser: &Browser, api: Api<'_>, reader: &str) {
    browser
        .client
        .execute(
            "document.querySelector('form[action*=\"/unsubscribe?\"] input[name=csrf]').remove();",
            vec![],
        )
        .await
        .unwrap();
    browser
        .click_and_wait("form[action*='/unsubscribe?'] button")
        .await;
    assert_eq!(browser.text("h1").await, "The request was refused");
    let errors = console_errors(&browser.client).await;
    assert!(
        errors.len() == 1 && errors[0].contains("status of 403"),
        "only the refusal: {errors:?}"
    );
    assert_eq!(api.export(reader).await.unwrap()["status"], "confirmed");
}

/// From the detail page at `detail`: erase, the confirmation step, gone.
async fn erase(browser: &Browser, api: Api<'_>, detail: &str, reader: &str, shots: &str) {
    browser.goto(detail).await;
    browser.click_and_wait("a[href*='/erase?']").await;
    assert!(browser.text("main").await.contains(reader));
    assert!(
        api.export(reader).await.is_ok(),
        "not before the confirmation"
    );
    browser.check_page(&format!("{shots}/console-erase")).await;
    browser
        .click_and_wait("form[action*='/erase?'] button")
        .await;
    assert_eq!(browser.path().await, "/admin/subscribers");
    assert_eq!(api.export(reader).await.unwrap_err(), 404);
    assert!(!browser.text("main table").await.contains(reader));
}

async fn an_operator_signs_in_reads_the_day_finds_and_erases_a_reader_and_signs_out(
    backend: Backend,
) {
    let db = TestDb::new(backend).await;
    let sink = SmtpSink::start();
    let serve = console_serve(&db, &sink, "").await;
    let http = reqwest::Client::new();
    let api = serve.api(&http);
    let reader = a_day_with_a_digest(api, &sink).await;
    let shots = format!("{backend:?}").to_lowercase();
    let browser = Browser::start().await;

    browser
        .goto(&format!("{}/admin/login?lang=en", serve.base))
        .await;
    browser.check_page(&format!("{shots}/console-login")).await;
    browser.login(&serve.base).await;
    the_dashboard_shows_the_day(&browser, &shots).await;
    search(&browser, reader, &shots).await;
    let detail = format!("{}{}?lang=en", serve.base, browser.path().await);
    a_form_without_its_csrf_token_is_refused(&browser, api, reader).await;
    erase(&browser, api, &detail, reader, &shots).await;

    browser
        .click_and_wait("form[action='/admin/logout'] button")
        .await;
    assert_eq!(browser.path().await, "/admin/login");
    browser.goto(&format!("{}/admin", serve.base)).await;
    assert_eq!(browser.path().await, "/admin/login", "signed out");
    browser.close().await;
}

async fn a_wrong_token_is_refused_on_the_form_and_then_throttled(backend: Backend) {
    let db = TestDb::new(backend).await;
    let sink = SmtpSink::start();
    let serve = console_serve(&db, &sink, "").await;
    let browser = Browser::start().await;
    let login = format!("{}/admin/login?lang=en", serve.base);
    for attempt in 1..=5 {
        browser.goto(&login).await;
        browser.fill("#token", "wrong-token").await;
        browser.click_and_wait("main form button").await;
        assert_eq!(
            browser.text("[role=alert]").await,
            "This token is wrong.",
            "attempt {attempt}"
        );
        assert_eq!(browser.path().await, "/admin/login");
    }
    browser.goto(&login).await;
    browser.fill("#token", crate::harness::ADMIN_TOKEN).await;
    browser.click_and_wait("main form button").await;
    assert_eq!(
        browser.text("h1").await,
        "Too many requests",
        "the sixth attempt in a minute, even with the right token"
    );
    browser.goto(&format!("{}/admin", serve.base)).await;
    assert_eq!(browser.path().await, "/admin/login", "not signed in");
    let errors = console_errors(&browser.client).await;
    assert_eq!(
        // The status as Chromium words it: a bare "401" could be in the port.
        errors
            .iter()
            .filter(|e| e.contains("status of 401"))
            .count(),
        5,
        "{errors:?}"
    );
    assert_eq!(
        errors
            .iter()
            .filter(|e| e.contains("status of 429"))
            .count(),
        1,
        "{errors:?}"
    );
    browser.close().await;
}

on_both_backends!(
    an_operator_signs_in_reads_the_day_finds_and_erases_a_reader_and_signs_out,
    a_wrong_token_is_refused_on_the_form_and_then_throttled,
);
