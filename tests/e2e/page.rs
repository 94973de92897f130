//! The status page as a person sees it: rendered by headless Chromium (Debian's package,
//! installed by `.ci/run`), checked through the rendered DOM, and saved as a screenshot.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use mongosim::{Cluster, ClusterSpec};

use crate::support::{shards_toml, start, wait_until};

fn chromium() -> Option<&'static str> {
    ["chromium", "chromium-browser", "google-chrome"]
        .into_iter()
        .find(|b| {
            Command::new(b)
                .arg("--version")
                .output()
                .is_ok_and(|o| o.status.success())
        })
}

fn headless(bin: &str, profile: &Path) -> Command {
    let mut c = Command::new(bin);
    c.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--hide-scrollbars",
        "--window-size=1200,700",
    ])
    .arg(format!("--user-data-dir={}", profile.display()));
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_page_renders_in_a_browser() {
    let Some(bin) = chromium() else {
        // CI installs Chromium (.ci/run); elsewhere the suite still runs without it.
        assert!(
            std::env::var("CI").is_err(),
            "Chromium is required in CI: .ci/run installs Debian's chromium package"
        );
        eprintln!("SKIPPED status_page_renders_in_a_browser: no chromium on PATH (apt-get install chromium)");
        return;
    };
    let cluster = Cluster::start(ClusterSpec {
        noop_interval: Duration::from_millis(200),
        ..ClusterSpec::default()
    })
    .await
    .unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let q = start(
        tmp.path(),
        &shards_toml(&cluster),
        "[start]\nposition = \"earliest\"\n[http]\nlisten = \"127.0.0.1:0\"\n",
    );
    cluster
        .insert(
            "shop.orders",
            vec![bson::doc! { "_id": 1 }, bson::doc! { "_id": 1001 }],
        )
        .await
        .unwrap();
    let status = q.status.clone();
    let names = cluster.shard_names();
    wait_until(30, "every member tailing", || {
        names.iter().all(|s| {
            let nodes = status.nodes(s);
            nodes.len() == 3
                && nodes
                    .values()
                    .all(|n| n.state == "tailing" && n.last_ts.is_some())
        })
    })
    .await;
    let url = format!("http://{}/", status.http_addr().unwrap());

    let profile = tmp.path().join("profile");
    let shot = std::env::var("QUORUMTAIL_SCREENSHOT")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|_| tmp.path().join("status.png"));
    let (dom, png) = {
        let (bin, profile, url, shot) =
            (bin.to_owned(), profile.clone(), url.clone(), shot.clone());
        tokio::task::spawn_blocking(move || {
            let dom = headless(&bin, &profile)
                .arg("--dump-dom")
                .arg(&url)
                .output()
                .unwrap();
            let png = headless(&bin, &profile)
                .arg(format!("--screenshot={}", shot.display()))
                .arg(&url)
                .output()
                .unwrap();
            (dom, png)
        })
        .await
        .unwrap()
    };
    assert!(
        dom.status.success(),
        "{}",
        String::from_utf8_lossy(&dom.stderr)
    );
    let dom = String::from_utf8_lossy(&dom.stdout).to_string();
    for s in &names {
        assert!(dom.contains(&format!("<h2>{s}</h2>")), "{dom}");
        for m in cluster.shard_members(s) {
            assert!(
                dom.contains(&m.to_string()),
                "member {m} missing from the page"
            );
        }
    }
    assert!(
        dom.contains("Ready: every shard can confirm entries."),
        "{dom}"
    );
    assert!(dom.matches("quorum available").count() >= 2);
    assert!(
        png.status.success(),
        "{}",
        String::from_utf8_lossy(&png.stderr)
    );
    let bytes = std::fs::read(&shot).unwrap();
    assert!(
        bytes.starts_with(b"\x89PNG") && bytes.len() > 10_000,
        "screenshot of {} bytes",
        bytes.len()
    );
    assert!(q.stop().await.ok());
    cluster.shutdown().await;
}
