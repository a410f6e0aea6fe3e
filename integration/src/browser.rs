//! Debian's headless Chromium, driven through `chromedriver` with the W3C
//! WebDriver protocol (JSON over HTTP, spoken with hyper's client): what a
//! test needs to use a page as a person would — load it, find elements,
//! click and type through the page's own event handlers, read the DOM
//! with a script, take a screenshot.
//!
//! `scripts/test` installs `chromium` and `chromium-driver` when missing.
//! Chromium runs headless with a fresh profile and with its background
//! networking off (it only talks to the page's loopback address).
//!
//! ```no_run
//! # async fn demo() -> Result<(), waypost_integration::HarnessError> {
//! use waypost_integration::browser::Browser;
//!
//! let browser = Browser::start().await?;
//! browser.open("http://127.0.0.1:9990/").await?;
//! let button = browser.find("button[data-action=drain]").await?;
//! browser.click(&button).await?;
//! let png = browser.screenshot().await?;
//! browser.close().await?;
//! # let _ = png; Ok(()) }
//! ```

use std::net::SocketAddr;
use std::process::Stdio;
use std::time::Duration;

use base64::Engine as _;
use http_body_util::BodyExt as _;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use crate::HarnessError;

/// The key of an element reference in WebDriver's JSON.
const ELEMENT_KEY: &str = "element-6066-11e4-a52e-4f735466cecf";

/// How long one WebDriver command may take.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);

/// An element found on the page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Element(String);

/// A headless Chromium session; the browser and its driver are stopped on
/// [`Browser::close`], or killed when dropped.
#[derive(Debug)]
pub struct Browser {
    driver: SocketAddr,
    session: String,
    child: Child,
    _profile: tempfile::TempDir,
}

fn peer(message: impl std::fmt::Display) -> HarnessError {
    HarnessError::Peer(format!("chromium: {message}"))
}

fn find_binary(names: &[&str]) -> Option<String> {
    names.iter().find_map(|name| {
        std::env::var_os("PATH").and_then(|path| {
            std::env::split_paths(&path)
                .map(|dir| dir.join(name))
                .find(|p| p.is_file())
                .map(|p| p.display().to_string())
        })
    })
}

impl Browser {
    /// Starts `chromedriver` on a free loopback port and opens a headless
    /// Chromium session.
    pub async fn start() -> Result<Browser, HarnessError> {
        let driver_binary = find_binary(&["chromedriver"]).ok_or_else(|| {
            peer("no chromedriver on PATH (apt-get install chromium chromium-driver; ./scripts/test does)")
        })?;
        let chromium = find_binary(&["chromium", "chromium-browser"]).ok_or_else(|| {
            peer("no chromium on PATH (apt-get install chromium; ./scripts/test does)")
        })?;
        let mut child = Command::new(&driver_binary)
            .args(["--port=0", "--allowed-ips=127.0.0.1", "--log-level=WARNING"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .process_group(0)
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| peer(format!("{driver_binary}: {e}")))?;
        // "ChromeDriver was started successfully on port N."
        let stdout = child.stdout.take().ok_or_else(|| peer("no stdout"))?;
        let mut lines = BufReader::new(stdout).lines();
        let port = tokio::time::timeout(Duration::from_secs(20), async {
            while let Some(line) = lines.next_line().await? {
                if let Some(rest) = line.split("started successfully on port ").nth(1) {
                    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
                    if let Ok(port) = digits.parse::<u16>() {
                        return Ok(port);
                    }
                }
            }
            Err(std::io::Error::other("chromedriver ended before listening"))
        })
        .await
        .map_err(|_| peer("chromedriver did not start in 20 s"))??;
        // Keep draining its output so it never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        let profile = tempfile::Builder::new()
            .prefix("waypost-chromium-")
            .tempdir()?;
        let mut browser = Browser {
            driver: SocketAddr::from(([127, 0, 0, 1], port)),
            session: String::new(),
            child,
            _profile: profile,
        };
        let args = [
            "--headless=new".to_owned(),
            "--no-sandbox".to_owned(),
            "--disable-gpu".to_owned(),
            "--disable-quic".to_owned(),
            "--no-first-run".to_owned(),
            "--disable-background-networking".to_owned(),
            "--disable-component-update".to_owned(),
            "--disable-sync".to_owned(),
            "--disable-dev-shm-usage".to_owned(),
            "--window-size=1100,760".to_owned(),
            format!("--user-data-dir={}", browser._profile.path().display()),
        ];
        let capabilities = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {"binary": chromium, "args": args},
        }}});
        let created = browser
            .command("POST", "/session", Some(capabilities))
            .await?;
        browser.session = created["sessionId"]
            .as_str()
            .ok_or_else(|| peer(format!("no session id in {created}")))?
            .to_owned();
        Ok(browser)
    }

    /// One WebDriver command; its `value`, or the driver's error.
    async fn command(
        &self,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value, HarnessError> {
        let exchange = async {
            let tcp = tokio::net::TcpStream::connect(self.driver).await?;
            let (mut sender, connection) =
                hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp))
                    .await
                    .map_err(peer)?;
            let connection = tokio::spawn(connection);
            let payload = body.map(|b| b.to_string()).unwrap_or_default();
            let request = http::Request::builder()
                .method(method)
                .uri(path)
                .header(http::header::HOST, self.driver.to_string())
                .header(http::header::CONTENT_TYPE, "application/json")
                .body(http_body_util::Full::new(bytes::Bytes::from(payload)))
                .map_err(peer)?;
            let response = sender.send_request(request).await.map_err(peer)?;
            let status = response.status();
            let body = response
                .into_body()
                .collect()
                .await
                .map_err(peer)?
                .to_bytes();
            connection.abort();
            let answer: Value = serde_json::from_slice(&body).map_err(|e| {
                peer(format!(
                    "{method} {path}: not JSON ({e}): {}",
                    String::from_utf8_lossy(&body)
                ))
            })?;
            if !status.is_success() {
                return Err(peer(format!(
                    "{method} {path}: HTTP {status}: {}",
                    answer["value"]
                )));
            }
            Ok(answer["value"].clone())
        };
        tokio::time::timeout(COMMAND_TIMEOUT, exchange)
            .await
            .map_err(|_| peer(format!("{method} {path} took over {COMMAND_TIMEOUT:?}")))?
    }

    fn session_path(&self, rest: &str) -> String {
        format!("/session/{}{rest}", self.session)
    }

    /// Loads `url` (returns once the page has loaded).
    pub async fn open(&self, url: &str) -> Result<(), HarnessError> {
        self.command(
            "POST",
            &self.session_path("/url"),
            Some(json!({"url": url})),
        )
        .await
        .map(drop)
    }

    /// The first element matching a CSS selector.
    pub async fn find(&self, selector: &str) -> Result<Element, HarnessError> {
        let found = self
            .command(
                "POST",
                &self.session_path("/element"),
                Some(json!({"using": "css selector", "value": selector})),
            )
            .await?;
        found[ELEMENT_KEY]
            .as_str()
            .map(|id| Element(id.to_owned()))
            .ok_or_else(|| peer(format!("{selector}: no element in {found}")))
    }

    /// Clicks `element` as a user would (scrolled into view, through the
    /// page's event handlers).
    pub async fn click(&self, element: &Element) -> Result<(), HarnessError> {
        self.command(
            "POST",
            &self.session_path(&format!("/element/{}/click", element.0)),
            Some(json!({})),
        )
        .await
        .map(drop)
    }

    /// Types `text` into `element`.
    pub async fn type_text(&self, element: &Element, text: &str) -> Result<(), HarnessError> {
        self.command(
            "POST",
            &self.session_path(&format!("/element/{}/value", element.0)),
            Some(json!({"text": text})),
        )
        .await
        .map(drop)
    }

    /// Runs `script` (a function body; `return` gives the value) in the
    /// page and returns its value.
    pub async fn eval(&self, script: &str) -> Result<Value, HarnessError> {
        self.command(
            "POST",
            &self.session_path("/execute/sync"),
            Some(json!({"script": script, "args": []})),
        )
        .await
    }

    /// Runs `script` every 50 ms until it returns `true`, for at most
    /// `limit`; errors with the last value otherwise.
    pub async fn wait_until(&self, script: &str, limit: Duration) -> Result<(), HarnessError> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let value = self.eval(script).await?;
            if value == Value::Bool(true) {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(peer(format!(
                    "not true within {limit:?}: {script} (last: {value})"
                )));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// A PNG of the window.
    pub async fn screenshot(&self) -> Result<Vec<u8>, HarnessError> {
        let encoded = self
            .command("GET", &self.session_path("/screenshot"), None)
            .await?;
        let text = encoded
            .as_str()
            .ok_or_else(|| peer("screenshot is not a string"))?;
        base64::engine::general_purpose::STANDARD
            .decode(text)
            .map_err(peer)
    }

    /// Ends the session (Chromium exits) and stops the driver.
    pub async fn close(mut self) -> Result<(), HarnessError> {
        let path = self.session_path("");
        let ended = self.command("DELETE", &path, None).await;
        let _ = self.child.kill().await;
        ended.map(drop)
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // A test that failed before `close`: stop the driver and the
        // browser it started (they share its process group).
        if let Some(pid) = self.child.id() {
            let _ = std::process::Command::new("kill")
                .args(["-KILL", "--", &format!("-{pid}")])
                .stderr(Stdio::null())
                .status();
        }
    }
}
