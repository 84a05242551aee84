//! The browser harness: Debian's headless Chromium driven through its chromedriver
//! with `fantoccini`, for the tests that look at pages as a reader or an operator
//! does. Each [`Browser`] starts its own chromedriver (on a loopback port chosen by
//! the OS, ready when its `/status` says so) and its own Chromium with a fresh,
//! empty profile; both end with it.
//!
//! A page is checked with [`Browser::check_page`]: screenshots at 1280 and 375 px
//! under `target/screenshots/`, axe-core (the version `tests/browser/package.json`
//! pins, installed by `scripts/test`) finding no serious or critical violation, and
//! no error in the browser's console. Nothing here skips: without chromedriver,
//! Chromium or axe-core a test fails and says to run `scripts/test`.

use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{Value, json};

use crate::harness::{ADMIN_TOKEN, Serve, SmtpSink, TestDb, free_port, listens_on};

/// Debian's paths (packages `chromium` and `chromium-driver`).
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
const CHROMIUM: &str = "/usr/bin/chromium";
/// The widths every page is looked at: a desktop window and a small phone.
pub const WIDE: u32 = 1280;
pub const NARROW: u32 = 375;
/// The narrowest phone a reader's page must fit without scrolling sideways.
pub const NARROWEST: u32 = 320;
/// The window's height while a test works in it (a screenshot takes the whole page).
const HEIGHT: u32 = 900;
/// How long a page may take to load, a script to run, an element to show up.
const PATIENCE: Duration = Duration::from_secs(20);

/// Chromium as root in a closed network: no sandbox (root), no GPU (headless), and
/// none of the background connections that the machine's network refuses.
const CHROMIUM_FLAGS: &[&str] = &[
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
];

/// A headless Chromium with its own chromedriver and profile, at [`WIDE`] px.
pub struct Browser {
    /// The WebDriver session: everything fantoccini can do is here too.
    pub client: Client,
    /// Owned so the driver (and the browser it started) ends with this value.
    _driver: Driver,
    /// The fresh `--user-data-dir`, removed when the browser is gone.
    _profile: tempfile::TempDir,
}

impl Browser {
    /// Starts chromedriver and a Chromium session; fails the test with what to do
    /// when either is not installed.
    pub async fn start() -> Self {
        Self::start_with(&[]).await
    }

    /// [`Browser::start`] with `extra` Chromium flags.
    pub async fn start_with(extra: &[String]) -> Self {
        for path in [CHROMEDRIVER, CHROMIUM] {
            assert!(
                Path::new(path).exists(),
                "{path} is missing: the browser tests need Debian's chromium and \
                 chromium-driver; run scripts/test (as root it installs them)"
            );
        }
        let driver = Driver::start().await;
        let profile = tempfile::tempdir().expect("a profile folder");
        let mut args: Vec<String> = CHROMIUM_FLAGS.iter().map(|f| (*f).to_owned()).collect();
        args.push(format!("--user-data-dir={}", profile.path().display()));
        args.push(format!("--window-size={WIDE},{HEIGHT}"));
        args.extend_from_slice(extra);
        let capabilities = json!({
            "browserName": "chrome",
            // English unless a page is asked for another language with `?lang=`.
            "goog:chromeOptions": {
                "binary": CHROMIUM,
                "args": args,
                "prefs": { "intl.accept_languages": "en-US,en" },
            },
            // The console's messages, read by `console_errors`.
            "goog:loggingPrefs": { "browser": "ALL" },
        });
        let Value::Object(capabilities) = capabilities else {
            unreachable!()
        };
        let client = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(capabilities)
            .connect(&driver.url)
            .await
            .unwrap_or_else(|e| {
                panic!("chromedriver did not start Chromium: {e}\n{}", driver.log())
            });
        let browser = Self {
            client,
            _driver: driver,
            _profile: profile,
        };
        browser.set_width(WIDE).await;
        browser
    }

    /// Ends the session (Chromium quits), then chromedriver.
    pub async fn close(self) {
        let _ = self.client.clone().close().await;
    }

    /// Opens `url` and waits until it has loaded.
    pub async fn goto(&self, url: &str) {
        self.client
            .goto(url)
            .await
            .unwrap_or_else(|e| panic!("open {url}: {e}"));
    }

    /// The path of the page shown now.
    pub async fn path(&self) -> String {
        self.client
            .current_url()
            .await
            .expect("the URL")
            .path()
            .to_owned()
    }

    /// The element `css` selects, waiting for it to show up.
    pub async fn find(&self, css: &str) -> fantoccini::elements::Element {
        match self
            .client
            .wait()
            .at_most(PATIENCE)
            .for_element(Locator::Css(css))
            .await
        {
            Ok(element) => element,
            Err(e) => panic!("no element {css} on {}: {e}", self.url_now().await),
        }
    }

    /// The visible text of the element `css` selects.
    pub async fn text(&self, css: &str) -> String {
        self.find(css).await.text().await.expect("its text")
    }

    /// Types `value` into the field `css` selects, replacing what it held.
    pub async fn fill(&self, css: &str, value: &str) {
        let field = self.find(css).await;
        field.clear().await.expect("clear the field");
        field.send_keys(value).await.expect("type into the field");
    }

    /// Clicks the element `css` selects (a checkbox, say: nothing to wait for).
    pub async fn click(&self, css: &str) {
        self.find(css).await.click().await.expect("click");
    }

    /// Clicks the element `css` selects and waits until the next page has loaded
    /// (a new document, even one at the same URL, as after a POST-redirect-GET).
    pub async fn click_and_wait(&self, css: &str) {
        self.client
            .execute("window.__postbote_old_page = true;", vec![])
            .await
            .expect("mark the page");
        self.click(css).await;
        let deadline = Instant::now() + PATIENCE;
        loop {
            let loaded = self
                .client
                .execute(
                    "return !window.__postbote_old_page && document.readyState === 'complete';",
                    vec![],
                )
                .await
                // A script may meet the old page going away.
                .unwrap_or(Value::Bool(false));
            if loaded == Value::Bool(true) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "no new page after clicking {css} (still at {})",
                self.url_now().await
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Signs in to the console at `base` on its login form with the admin token;
    /// the dashboard is shown after.
    pub async fn login(&self, base: &str) {
        self.goto(&format!("{base}/admin/login?lang=en")).await;
        self.fill("#token", ADMIN_TOKEN).await;
        self.click_and_wait("form[action^='/admin/login'] button[type=submit]")
            .await;
        assert_eq!(self.path().await, "/admin", "the dashboard after login");
    }

    /// Whether the page shown now has an element `css` selects (without waiting).
    pub async fn has(&self, css: &str) -> bool {
        !self
            .client
            .find_all(Locator::Css(css))
            .await
            .expect("look for elements")
            .is_empty()
    }

    /// Reloads the page until the text of the element `css` selects contains
    /// `needle` (something the server does in the background, such as a feed's
    /// poll, has shown up); returns that text.
    pub async fn reload_until(&self, css: &str, needle: &str) -> String {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let text = self.text(css).await;
            if text.contains(needle) {
                return text;
            }
            assert!(
                Instant::now() < deadline,
                "{needle:?} not in {css} of {}: {text}",
                self.url_now().await
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
            self.client.refresh().await.expect("reload the page");
        }
    }

    /// Resizes the window to `width` px (and the test's usual height).
    pub async fn set_width(&self, width: u32) {
        self.client
            .set_window_size(width, HEIGHT)
            .await
            .expect("resize the window");
    }

    /// Screenshots (at [`WIDE`] and [`NARROW`] px), axe-core and the console: the
    /// page shown now has no serious or critical accessibility violation at either
    /// width and logged no error since the last check. `name` names the files
    /// (`target/screenshots/<name>-<width>.png`; it may hold a `/`).
    pub async fn check_page(&self, name: &str) {
        for width in [WIDE, NARROW] {
            self.set_width(width).await;
            self.screenshot(&format!("{name}-{width}")).await;
            let violations = axe(&self.client).await;
            assert!(
                violations.is_empty(),
                "axe-core on {name} at {width} px ({}): {}",
                self.url_now().await,
                serde_json::to_string_pretty(&violations).unwrap()
            );
        }
        self.set_width(WIDE).await;
        let errors = console_errors(&self.client).await;
        assert!(
            errors.is_empty(),
            "console errors on {name} ({}): {errors:#?}",
            self.url_now().await
        );
    }

    /// The page shown now fits a window [`NARROWEST`] px wide: nothing on it makes
    /// the page scroll sideways (a screenshot `<name>-320.png` shows it).
    pub async fn assert_fits_narrowest(&self, name: &str) {
        self.set_width(NARROWEST).await;
        self.screenshot(&format!("{name}-{NARROWEST}")).await;
        let widths = self
            .client
            .execute(
                "const e = document.documentElement; return [e.clientWidth, e.scrollWidth];",
                vec![],
            )
            .await
            .expect("the page's widths");
        self.set_width(WIDE).await;
        let width = |i: usize| widths[i].as_u64().expect("a width");
        let (shown, needed) = (width(0), width(1));
        assert!(
            shown <= u64::from(NARROWEST),
            "{name}: the window did not get narrow enough ({shown} px)"
        );
        assert!(
            needed <= shown,
            "{name} scrolls sideways at {NARROWEST} px: {needed} px of content in {shown}"
        );
    }

    /// Saves the whole page as it looks now at the window's width to
    /// `target/screenshots/<name>.png` and prints the path.
    pub async fn screenshot(&self, name: &str) -> PathBuf {
        screenshot(&self.client, name).await
    }

    async fn url_now(&self) -> String {
        self.client
            .current_url()
            .await
            .map(|u| u.to_string())
            .unwrap_or_default()
    }
}

/// `postbote serve` for the console's browser tests, ready: its scheduler stays
/// still (a test runs the digest passes it wants through the admin API); `extra`
/// is appended to its configuration.
pub async fn console_serve(db: &TestDb, sink: &SmtpSink, extra: &str) -> Serve {
    let serve = Serve::start_on_own_port(
        db,
        &sink.url(),
        &format!("[digest]\nrun_scheduler = false\n{extra}"),
    )
    .await;
    serve.wait_ready(&reqwest::Client::new()).await;
    serve
}

/// Where the screenshots go: `target/screenshots/` of this checkout.
pub fn screenshot_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("target/screenshots")
}

/// Saves the whole page of `client` as it looks at its window's width to
/// `target/screenshots/<name>.png` and prints the path (shown with the test's
/// output; `scripts/test` lists them all at its end). The window grows to the
/// page's height for the shot and shrinks back after.
pub async fn screenshot(client: &Client, name: &str) -> PathBuf {
    let (width, height) = client.get_window_size().await.expect("the window size");
    // The page's height, and what the window has beyond its viewport.
    let measured = client
        .execute(
            "return [Math.ceil(document.documentElement.scrollHeight),
                     window.outerHeight - window.innerHeight];",
            vec![],
        )
        .await
        .expect("measure the page");
    let number = |i: usize| measured[i].as_u64().unwrap_or(0);
    let tall = (number(0) + number(1)).clamp(height, 10_000);
    if tall > height {
        client
            .set_window_size(width as u32, tall as u32)
            .await
            .expect("grow the window");
    }
    let png = client.screenshot().await.expect("a screenshot");
    if tall > height {
        client
            .set_window_size(width as u32, height as u32)
            .await
            .expect("shrink the window");
    }
    let path = screenshot_dir().join(format!("{name}.png"));
    std::fs::create_dir_all(path.parent().unwrap()).expect("the screenshot folder");
    // Written whole under another name first: a reader never sees half a file.
    let partial = path.with_extension(format!("png.{}", std::process::id()));
    std::fs::write(&partial, png).expect("write the screenshot");
    std::fs::rename(&partial, &path).expect("move the screenshot in place");
    println!("screenshot: {}", path.display());
    path
}

/// The pinned axe-core, from `tests/browser/node_modules` (`scripts/test` runs
/// `npm ci` there).
fn axe_source() -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/browser/node_modules/axe-core/axe.min.js");
    std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e}. The browser tests need axe-core: run scripts/test \
             (or `npm ci` in tests/browser)",
            path.display()
        )
    })
}

/// Runs axe-core on the page `client` shows; returns the serious and critical
/// violations, each with the rule, its help text and the elements that break it.
pub async fn axe(client: &Client) -> Vec<Value> {
    let loaded = client
        .execute("return typeof axe !== 'undefined';", vec![])
        .await
        .expect("look for axe-core");
    if loaded != Value::Bool(true) {
        client
            .execute(&axe_source(), vec![])
            .await
            .expect("load axe-core into the page");
    }
    let run = r#"
        const done = arguments[arguments.length - 1];
        axe.run(document, { resultTypes: ['violations'] })
          .then(r => done({ violations: r.violations
            .filter(v => v.impact === 'serious' || v.impact === 'critical')
            .map(v => ({ id: v.id, impact: v.impact, help: v.help,
              nodes: v.nodes.map(n => n.target.join(' ') + ': ' + n.failureSummary) })) }))
          .catch(e => done({ error: String(e) }));
    "#;
    let result = client
        .execute_async(run, vec![])
        .await
        .expect("run axe-core");
    assert!(result.get("error").is_none(), "axe-core failed: {result}");
    result["violations"].as_array().cloned().unwrap_or_default()
}

/// The errors the browser's console logged since the last call (chromedriver hands
/// each entry out once): script errors, CSP violations, failed requests such as a
/// 404 for `/favicon.ico`.
pub async fn console_errors(client: &Client) -> Vec<String> {
    let entries = client
        .issue_cmd(BrowserLog)
        .await
        .expect("read the browser's log");
    entries
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["level"] == "SEVERE")
        .map(|e| e["message"].as_str().unwrap_or_default().to_owned())
        .collect()
}

/// chromedriver's log endpoint (not in the W3C protocol): the console's entries.
#[derive(Debug)]
struct BrowserLog;

impl fantoccini::wd::WebDriverCompatibleCommand for BrowserLog {
    fn endpoint(
        &self,
        base_url: &url::Url,
        session_id: Option<&str>,
    ) -> Result<url::Url, url::ParseError> {
        base_url.join(&format!(
            "session/{}/se/log",
            session_id.unwrap_or_default()
        ))
    }

    fn method_and_body(&self, _: &url::Url) -> (axum::http::Method, Option<String>) {
        (
            axum::http::Method::POST,
            Some(json!({ "type": "browser" }).to_string()),
        )
    }
}

/// A chromedriver of our own, in its own process group so that ending it ends the
/// Chromium it started too, even when a test panics before closing its session.
struct Driver {
    child: Child,
    url: String,
    log: tempfile::NamedTempFile,
}

impl Driver {
    /// Starts chromedriver on a free loopback port and waits until its `/status`
    /// says it is ready. chromedriver takes no `--port=0`: a port the OS chose is
    /// free only until someone binds it, so when this chromedriver does not get it,
    /// it is started again on another (at most five times).
    async fn start() -> Self {
        for _ in 0..5 {
            if let Some(driver) = Self::try_start_on(free_port()).await {
                return driver;
            }
        }
        panic!("chromedriver could not bind a port in five tries");
    }

    /// Starts chromedriver on `port`; `None` when it exited instead (it does when
    /// 127.0.0.1:port is taken). Until this very process listens there, an answer
    /// on the port may be someone else's.
    async fn try_start_on(port: u16) -> Option<Self> {
        let log = tempfile::NamedTempFile::new().expect("a log file");
        let child = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .arg(format!("--log-path={}", log.path().display()))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("start {CHROMEDRIVER}: {e}; run scripts/test"));
        // Owned from here on: dropped (killed) on every way out but success.
        let mut driver = Self {
            child,
            url: format!("http://127.0.0.1:{port}"),
            log,
        };
        let http = reqwest::Client::new();
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Ok(Some(_)) = driver.child.try_wait() {
                return None;
            }
            if listens_on(driver.child.id(), port) {
                let status = http.get(format!("{}/status", driver.url)).send().await;
                if let Ok(r) = status
                    && r.json::<Value>()
                        .await
                        .is_ok_and(|s| s["value"]["ready"] == true)
                {
                    return Some(driver);
                }
            }
            assert!(
                Instant::now() < deadline,
                "chromedriver was not ready on {port} within {PATIENCE:?}\n{}",
                driver.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// What chromedriver logged, for a failure message.
    fn log(&self) -> String {
        std::fs::read_to_string(self.log.path()).unwrap_or_default()
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        // The whole group: chromedriver and the browser processes it started.
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.child.id())])
            .status();
        let _ = self.child.wait();
    }
}
