//! A real headless Chromium, driven over WebDriver: Debian's `chromium` and `chromedriver`
//! (packages chromium, chromium-driver; scripts/test.sh installs them). The driver listens on a
//! loopback port of its own and is killed when the [`Browser`] is dropped.
#![allow(dead_code)]
use fantoccini::{Client, ClientBuilder, Locator};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Browser {
    pub c: Client,
    driver: Child,
}

fn find(env: &str, paths: &[&str]) -> String {
    if let Ok(p) = std::env::var(env) {
        return p;
    }
    for p in paths {
        if std::path::Path::new(p).exists() {
            return p.to_string();
        }
    }
    panic!(
        "no {} found: install Debian's chromium and chromium-driver (scripts/test.sh does), or set {env}",
        paths[0]
    );
}

impl Browser {
    pub async fn start() -> Browser {
        let driver_bin = find("LEASEKEEPER_CHROMEDRIVER", &["/usr/bin/chromedriver"]);
        let chromium = find(
            "LEASEKEEPER_CHROMIUM",
            &["/usr/bin/chromium", "/usr/bin/chromium-browser"],
        );
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let driver = Command::new(&driver_bin)
            .arg(format!("--port={port}"))
            .arg("--allowed-ips=127.0.0.1")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {driver_bin}: {e}"));
        let mut caps = serde_json::Map::new();
        caps.insert(
            "goog:chromeOptions".into(),
            serde_json::json!({
                "binary": chromium,
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                         "--window-size=1400,1000", "--no-first-run", "--no-default-browser-check"],
            }),
        );
        let url = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(20);
        let c = loop {
            let mut b =
                ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new());
            b.capabilities(caps.clone());
            match b.connect(&url).await {
                Ok(c) => break c,
                Err(e) if Instant::now() < deadline => {
                    let _ = e;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => panic!("chromedriver at {url} did not start a browser: {e}"),
            }
        };
        Browser { c, driver }
    }

    /// The text of the first element `css` matches, once one does (within `timeout`).
    pub async fn text_of(&self, css: &str, timeout: Duration) -> String {
        let el = self
            .c
            .wait()
            .at_most(timeout)
            .for_element(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("no element {css:?} within {timeout:?}: {e}"));
        el.text().await.unwrap()
    }

    /// Polls `script` (a JavaScript body returning a value) until `ok` accepts its result.
    pub async fn until<F>(
        &self,
        script: &str,
        timeout: Duration,
        what: &str,
        ok: F,
    ) -> serde_json::Value
    where
        F: Fn(&serde_json::Value) -> bool,
    {
        let deadline = Instant::now() + timeout;
        loop {
            let v = self.c.execute(script, vec![]).await.unwrap();
            if ok(&v) {
                return v;
            }
            assert!(
                Instant::now() < deadline,
                "{what}: not within {timeout:?} (last: {v})"
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Saves a PNG of the window under target/screenshots (and under
    /// $LEASEKEEPER_SCREENSHOTS_DIR when set: `docs/img` refreshes the committed ones).
    pub async fn screenshot(&self, name: &str) {
        let png = self.c.screenshot().await.unwrap();
        let mut dirs =
            vec![std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("../screenshots")];
        if let Ok(d) = std::env::var("LEASEKEEPER_SCREENSHOTS_DIR") {
            dirs.push(d.into());
        }
        for d in dirs {
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(d.join(format!("{name}.png")), &png).unwrap();
        }
    }

    pub async fn close(mut self) {
        let _ = self.c.clone().close().await;
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}
