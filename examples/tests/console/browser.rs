//! A real headless Chromium, driven over WebDriver by chromedriver: what a support
//! engineer's browser does with the console's pages, forms and cookies.

use std::process::Stdio;
use std::time::Duration;

use fantoccini::{Client, ClientBuilder, Locator};
use tokio::process::{Child, Command};

/// A browser session and the chromedriver behind it; both end on drop.
pub(crate) struct Browser {
    pub(crate) client: Client,
    _driver: Child,
}

/// A free port on loopback, for a process the test starts.
pub(crate) fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// True when chromium and chromedriver are installed (`scripts/tools.sh`).
pub(crate) fn installed() -> bool {
    testkit::program_runs("chromedriver") && testkit::program_runs("chromium")
}

impl Browser {
    /// Starts chromedriver and a headless Chromium a page wide enough for the tables.
    pub(crate) async fn start() -> anyhow::Result<Self> {
        let port = free_port()?;
        let driver = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()?;
        let endpoint = format!("http://127.0.0.1:{port}");
        testkit::wait_until(
            Duration::from_secs(20),
            "chromedriver listens",
            async || {
                Ok(tokio::net::TcpStream::connect(("127.0.0.1", port))
                    .await
                    .is_ok())
            },
        )
        .await?;
        let mut capabilities = serde_json::Map::new();
        capabilities.insert(
            "goog:chromeOptions".to_owned(),
            serde_json::json!({
                "binary": "/usr/bin/chromium",
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                         "--disable-dev-shm-usage", "--window-size=1280,1500"],
            }),
        );
        // Fails only when a provider is already installed, which is as good.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = ClientBuilder::rustls()?
            .capabilities(capabilities)
            .connect(&endpoint)
            .await?;
        Ok(Self {
            client,
            _driver: driver,
        })
    }

    /// The element `css` selects, once the page has one: a click that submits a form
    /// returns before the next page is there, so each step looks for an element only
    /// that page has, until it appears.
    async fn element(&self, css: &str) -> anyhow::Result<fantoccini::elements::Element> {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            match self.client.find(Locator::Css(css)).await {
                Ok(element) => return Ok(element),
                Err(error) if std::time::Instant::now() >= deadline => return Err(error.into()),
                // Not there yet (fantoccini's own wait gives up at the first miss here).
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    }

    /// The text of the element `css` selects.
    pub(crate) async fn text(&self, css: &str) -> anyhow::Result<String> {
        Ok(self.element(css).await?.text().await?)
    }

    /// Types `text` into the field `css` selects.
    pub(crate) async fn fill(&self, css: &str, text: &str) -> anyhow::Result<()> {
        self.element(css).await?.send_keys(text).await?;
        Ok(())
    }

    /// Clicks what `css` selects.
    pub(crate) async fn click(&self, css: &str) -> anyhow::Result<()> {
        self.element(css).await?.click().await?;
        Ok(())
    }

    /// Saves the page as a PNG at `path`.
    pub(crate) async fn screenshot(&self, path: &std::path::Path) -> anyhow::Result<()> {
        if let Some(folder) = path.parent() {
            std::fs::create_dir_all(folder)?;
        }
        std::fs::write(path, self.client.screenshot().await?)?;
        Ok(())
    }
}
