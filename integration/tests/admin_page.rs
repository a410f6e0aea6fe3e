//! The admin port's status page in a real browser: `waypost serve` with
//! backends from etcd (weights, zones) and an admin token, Debian's
//! headless Chromium driven through chromedriver. The page lists every
//! backend with its state; a click on Drain asks for the token once, posts
//! with it, and the row turns "draining" without a reload; a change made
//! elsewhere shows up by the page's own polling; a service name that is
//! HTML stays text. A screenshot is kept in target/tmp/admin-page.png.

mod lbserve;

use std::time::Duration;

use lbserve::fast_serve_options;
use waypost_integration::backend::{Backend, start_backends};
use waypost_integration::browser::Browser;
use waypost_integration::etcd::EtcdServer;
use waypost_lbserver::config::Config;
use waypost_lbserver::server::start;

const TOKEN: &str = "page-test-token";
const HOSTILE: &str = "<img src=x onerror=\"document.title=1\">";

async fn register(etcd: &mut etcd_client::Client, backend: &Backend, metadata: &str) {
    let addr = backend.addr();
    etcd.put(
        format!("movies/{addr}"),
        format!(r#"{{"Op":0,"Addr":"{addr}","Metadata":{metadata}}}"#),
        None,
    )
    .await
    .unwrap();
}

/// The `data-state` of each backend row, in page order.
const ROW_STATES: &str = "return Array.from(document.querySelectorAll('section[data-service=\"movies\"] tr[data-backend]')).map(r => r.dataset.backend + ' ' + r.dataset.state).join(',')";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_page_lists_backends_and_drains_one_with_a_click() {
    let etcd_server = EtcdServer::start().await.unwrap();
    let backends = start_backends(3).await.unwrap();
    let mut etcd = waypost_resolver::etcd::connect(&[etcd_server.addr()])
        .await
        .unwrap();
    register(
        &mut etcd,
        &backends[0],
        r#"{"weight":3,"region":"eu","zone":"eu-1a"}"#,
    )
    .await;
    register(
        &mut etcd,
        &backends[1],
        r#"{"weight":1,"region":"eu","zone":"eu-1b"}"#,
    )
    .await;
    register(
        &mut etcd,
        &backends[2],
        r#"{"weight":1,"region":"eu","zone":"eu-1b"}"#,
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, TOKEN).unwrap();
    let text = format!(
        "listen = \"127.0.0.1:0\"\nadmin = \"127.0.0.1:0\"\nadmin_token_file = \"{}\"\netcd = [\"{}\"]\n\
         [[service]]\nname = \"movies\"\nsource = \"etcd:///movies\"\npolicy = \"weighted\"\n\
         [[service]]\nname = '{HOSTILE}'\nsource = \"{}\"\n",
        token_file.display(),
        etcd_server.addr(),
        backends[0].addr(),
    );
    let lb = start(
        Config::parse(&text, "page.toml").unwrap(),
        fast_serve_options(),
    )
    .await
    .unwrap();
    let admin = lb.admin.unwrap();
    let movies = lb.registry.find("movies").unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while movies.views().iter().filter(|b| b.healthy).count() < 3 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "backends healthy in time"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let browser = Browser::start().await.unwrap();
    browser.open(&format!("http://{admin}/")).await.unwrap();
    browser
        .eval("window.loadedOnce = 'yes'; return true")
        .await
        .unwrap();
    let wait = Duration::from_secs(15);
    browser
        .wait_until(
            "return document.querySelectorAll('section[data-service=\"movies\"] tr[data-backend]').length === 3",
            wait,
        )
        .await
        .unwrap();
    // Every backend, healthy, with its weight and zone.
    let states = browser.eval(ROW_STATES).await.unwrap();
    for b in &backends {
        assert!(
            states
                .as_str()
                .unwrap()
                .contains(&format!("{} healthy", b.addr())),
            "{states}"
        );
    }
    let row_text = browser
        .eval(&format!(
            "return document.querySelector('tr[data-backend=\"{}\"]').textContent",
            backends[0].addr()
        ))
        .await
        .unwrap();
    assert!(
        row_text.as_str().unwrap().contains("eu / eu-1a"),
        "{row_text}"
    );

    // The hostile name is shown as text: no element was made of it.
    let hostile = browser
        .eval("return [document.querySelectorAll('img').length, document.title, Array.from(document.querySelectorAll('h2')).map(h => h.textContent)]")
        .await
        .unwrap();
    assert_eq!(hostile[0], 0, "{hostile}");
    assert_eq!(hostile[1], "waypost serve", "{hostile}");
    assert!(
        hostile[2].as_array().unwrap().iter().any(|h| h == HOSTILE),
        "{hostile}"
    );

    // Drain backend 1 with a click: the page asks for the token, then
    // posts with it.
    let target = backends[1].addr().to_string();
    let row_is = |state: &str| {
        format!(
            "return document.querySelector('tr[data-backend=\"{target}\"]').dataset.state === '{state}'"
        )
    };
    let button = browser
        .find(&format!(
            "button[data-backend=\"{target}\"][data-action=drain]"
        ))
        .await
        .unwrap();
    browser.click(&button).await.unwrap();
    browser
        .wait_until(
            "return document.getElementById('auth').classList.contains('shown')",
            wait,
        )
        .await
        .unwrap();
    assert!(
        !movies.views().iter().any(|b| b.draining),
        "nothing drained without the token"
    );
    let input = browser.find("#token").await.unwrap();
    browser.type_text(&input, TOKEN).await.unwrap();
    browser
        .click(&browser.find("#token-save").await.unwrap())
        .await
        .unwrap();
    browser.wait_until(&row_is("draining"), wait).await.unwrap();
    assert!(
        movies
            .views()
            .iter()
            .any(|b| b.addr == backends[1].addr() && b.draining),
        "the registry has it draining"
    );
    let status = waypost_lbserver::admin::status(&lb.registry);
    let listed = status["services"][0]["backends"].as_array().unwrap();
    assert!(
        listed
            .iter()
            .any(|b| b["addr"] == target.as_str() && b["draining"] == true),
        "{status}"
    );

    // A change made elsewhere reaches the page by its polling, still
    // without a reload.
    assert!(movies.set_draining(backends[1].addr(), false));
    browser.wait_until(&row_is("healthy"), wait).await.unwrap();
    // Drain it again for the picture, with the token kept in the session.
    browser
        .click(
            &browser
                .find(&format!(
                    "button[data-backend=\"{target}\"][data-action=drain]"
                ))
                .await
                .unwrap(),
        )
        .await
        .unwrap();
    browser.wait_until(&row_is("draining"), wait).await.unwrap();
    assert_eq!(
        browser.eval("return window.loadedOnce").await.unwrap(),
        "yes",
        "the page was never reloaded"
    );

    let png = browser.screenshot().await.unwrap();
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "a PNG");
    let path = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("admin-page.png");
    std::fs::write(&path, &png).unwrap();
    eprintln!("screenshot: {}", path.display());
    browser.close().await.unwrap();
}
