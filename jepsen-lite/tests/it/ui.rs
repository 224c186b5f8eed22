//! The playground in a real browser: `jepsen-lite ui --nodes 3` (a real process with its own three nodes) driven
//! by Debian's headless chromium through the DevTools protocol. The page must show three nodes and one leader;
//! a click on "isolate" under the leader must lead to a new leader in a higher term on the majority, with the old
//! one shown cut off; a stale read on the isolated node must answer with how stale it may be; a click on "heal"
//! must bring back one leader that every node follows. Then the guided "split brain, step by step" buttons, in
//! order: the write through the isolated old leader is refused, the one on the majority acknowledged, the
//! stale read on the old leader answers (may be stale), its linearizable read is refused, heal. Also: requests
//! addressed to another host, or sent from another site's page, are refused over real HTTP.
//!
//! With `RAFTKV_UI_SCREENSHOT=PATH`, the page is saved as a PNG while the leader is cut off (the README's
//! picture: `RAFTKV_UI_SCREENSHOT=docs/playground.png cargo test -p jepsen-lite --test it ui::`).

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use chromiumoxide::browser::{Browser, BrowserConfig};
use chromiumoxide::page::ScreenshotParams;
use chromiumoxide::Page;
use futures::StreamExt as _;
use serde_json::Value;
use tempfile::TempDir;
use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::process::{Child, Command};

/// Where Debian and others put the browser.
const CHROMIUM_CANDIDATES: [&str; 3] = [
    "/usr/bin/chromium",
    "/usr/bin/chromium-browser",
    "/usr/bin/google-chrome",
];
/// Longest the playground may take to start its cluster and print its address.
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// Longest the page may take to show what a step expects (elections at the fast timing take about a second;
/// the page is updated every few hundred milliseconds).
const PAGE_WAIT: Duration = Duration::from_secs(30);
/// Pause between two looks at the page.
const PAGE_POLL: Duration = Duration::from_millis(200);
/// Longest one raw HTTP exchange with the playground may take (connect, send, read to the end).
const HTTP_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest the playground may take to stop after SIGTERM.
const STOP_TIMEOUT: Duration = Duration::from_secs(20);

/// A running `jepsen-lite ui`: `stop` sends SIGTERM and waits for a clean exit; dropped otherwise, it is
/// SIGKILLed (`kill_on_drop`).
struct Playground {
    child: Child,
    url: String,
    _dir: TempDir,
}

impl Playground {
    async fn start() -> Playground {
        let dir = TempDir::new().unwrap();
        let port = raftkv_testkit::free_port();
        let mut child = Command::new(env!("CARGO_BIN_EXE_jepsen-lite"))
            .args(["ui", "--nodes", "3", "--listen"])
            .arg(format!("127.0.0.1:{port}"))
            .arg("--data-dir")
            .arg(dir.path().join("cluster"))
            .env(
                "RAFTKV_SERVER_BIN",
                raftkv_testkit::server_binary().expect("raftkv-server binary"),
            )
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("start jepsen-lite ui");
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let line = tokio::time::timeout(START_TIMEOUT, lines.next_line())
            .await
            .expect("the playground printed its address in time")
            .unwrap()
            .expect("the playground printed a line");
        let url = line
            .strip_prefix("playground: ")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
            .to_string();
        assert_eq!(url, format!("http://127.0.0.1:{port}/"));
        Playground {
            child,
            url,
            _dir: dir,
        }
    }

    async fn stop(mut self) {
        let status = crate::terminate(&mut self.child, STOP_TIMEOUT).await;
        assert!(
            status.success(),
            "the playground did not stop cleanly: {status}"
        );
    }
}

/// Sends a raw HTTP request and returns the status line.
async fn http_status(url: &str, request: &str) -> String {
    let address = url
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_string();
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(&address).await?;
        stream.write_all(request.as_bytes()).await?;
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await?;
        std::io::Result::Ok(response)
    };
    let response = tokio::time::timeout(HTTP_TIMEOUT, exchange)
        .await
        .expect("an answer in time")
        .expect("the playground answers over HTTP");
    let text = String::from_utf8_lossy(&response).into_owned();
    text.lines().next().unwrap_or_default().to_string()
}

fn chromium() -> PathBuf {
    CHROMIUM_CANDIDATES
        .iter()
        .map(PathBuf::from)
        .find(|path| path.is_file())
        .expect("chromium is not installed (Debian: apt-get install chromium; .ci/run installs it)")
}

/// What the page shows, read by a script in the page.
async fn look(page: &Page) -> Value {
    let script = r#"(() => {
        const nodes = [...document.querySelectorAll('.node')].map((card) => ({
            id: Number(card.dataset.node), role: card.dataset.role, term: Number(card.dataset.term),
            health: card.dataset.health, cutOff: card.dataset.cutOff === 'true' }));
        const answer = document.getElementById('answer');
        return { nodes, answer: answer.textContent, answerOk: answer.dataset.ok || null,
                 command: document.getElementById('command').textContent,
                 events: document.getElementById('events').textContent };
    })()"#;
    page.evaluate(script)
        .await
        .expect("the page runs the script")
        .into_value()
        .expect("the script returns JSON")
}

/// Looks at the page until `check` accepts what it shows; panics with the last look after `PAGE_WAIT`.
async fn wait_for(page: &Page, what: &str, check: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + PAGE_WAIT;
    loop {
        let seen = look(page).await;
        if check(&seen) {
            return seen;
        }
        assert!(
            Instant::now() < deadline,
            "the page did not show {what} within {PAGE_WAIT:?}; it shows {seen:#}"
        );
        tokio::time::sleep(PAGE_POLL).await;
    }
}

fn serving_leaders(seen: &Value) -> Vec<(u64, u64)> {
    seen["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|node| node["role"] == "leader" && node["health"] == "serving")
        .map(|node| (node["id"].as_u64().unwrap(), node["term"].as_u64().unwrap()))
        .collect()
}

/// Clicks the guided scenario's button for `step` and waits for its answer in the page.
async fn guided_step(page: &Page, step: &str) -> Value {
    // The previous answer's verdict goes first, so the wait below sees this step's.
    let clicked: bool = page
        .evaluate(format!(
            "(() => {{ document.getElementById('answer').removeAttribute('data-ok'); const b = document.querySelector(\"button[data-step='{step}']\"); if (b) b.click(); return !!b; }})()"
        ))
        .await
        .expect("the page runs the script")
        .into_value()
        .expect("a boolean");
    assert!(clicked, "no guided button for step {step}");
    wait_for(page, &format!("the answer to step {step}"), |seen| {
        !seen["answerOk"].is_null()
    })
    .await
}

/// A node count the playground cannot start is refused in words before its data dir is cleared.
#[tokio::test]
async fn a_bad_node_count_is_refused_and_the_data_dir_kept() {
    let dir = TempDir::new().unwrap();
    let data_dir = dir.path().join("cluster");
    std::fs::create_dir_all(&data_dir).unwrap();
    std::fs::write(data_dir.join("keep"), b"data").unwrap();
    let port = raftkv_testkit::free_port();
    use jepsen_lite::cluster::NODES_MAX;
    for nodes in [0, NODES_MAX + 1] {
        let nodes = nodes.to_string();
        let output = tokio::time::timeout(
            START_TIMEOUT,
            Command::new(env!("CARGO_BIN_EXE_jepsen-lite"))
                .args(["ui", "--nodes", &nodes, "--listen"])
                .arg(format!("127.0.0.1:{port}"))
                .arg("--data-dir")
                .arg(&data_dir)
                .kill_on_drop(true)
                .output(),
        )
        .await
        .expect("the playground answered in time")
        .expect("jepsen-lite runs");
        assert!(!output.status.success(), "--nodes {nodes} was accepted");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            stderr.contains(&format!(
                "--nodes must be between 1 and {NODES_MAX}, not {nodes}"
            )),
            "{stderr}"
        );
        assert!(
            data_dir.join("keep").exists(),
            "--nodes {nodes} cleared the data dir"
        );
    }
}

/// Asserts that the page's answer has verdict `ok` and contains `text`; returns the answer.
fn expect_answer<'a>(seen: &'a Value, ok: bool, text: &str) -> &'a str {
    assert_eq!(seen["answerOk"], ok.to_string(), "{seen:#}");
    let answer = seen["answer"].as_str().unwrap();
    assert!(answer.contains(text), "expected {text:?} in {seen:#}");
    answer
}

/// Every node serving, none cut off, one leader and every node in its term.
fn one_leader_every_node_follows(seen: &Value) -> bool {
    let leaders = serving_leaders(seen);
    let nodes = seen["nodes"].as_array().unwrap();
    leaders.len() == 1
        && nodes
            .iter()
            .all(|node| node["health"] == "serving" && node["cutOff"] == false)
        && nodes
            .iter()
            .all(|node| node["term"].as_u64() == Some(leaders[0].1))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_playground_shows_an_isolated_leader_replaced_and_healed_in_a_real_browser() {
    let playground = Playground::start().await;

    // Only requests addressed to the playground itself are answered.
    let own = http_status(
        &playground.url,
        &format!(
            "GET / HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
            playground
                .url
                .trim_start_matches("http://")
                .trim_end_matches('/')
        ),
    )
    .await;
    assert!(own.contains(" 200 "), "{own}");
    let rebound = http_status(
        &playground.url,
        "GET / HTTP/1.1\r\nHost: rebound.example:80\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(rebound.contains(" 403 "), "{rebound}");
    let cross_site = http_status(
        &playground.url,
        &format!(
            "POST /api/action HTTP/1.1\r\nHost: {}\r\nOrigin: http://evil.example\r\nContent-Length: 17\r\nConnection: close\r\n\r\n{{\"action\":\"heal\"}}",
            playground.url.trim_start_matches("http://").trim_end_matches('/')
        ),
    )
    .await;
    assert!(cross_site.contains(" 403 "), "{cross_site}");

    let profile = TempDir::new().unwrap();
    let config = BrowserConfig::builder()
        .chrome_executable(chromium())
        .no_sandbox()
        .user_data_dir(profile.path())
        .window_size(1400, 1100)
        .viewport(None)
        .build()
        .expect("a browser configuration");
    let (mut browser, mut handler) = Browser::launch(config).await.expect("chromium starts");
    let events = tokio::spawn(async move { while handler.next().await.is_some() {} });
    let page = browser
        .new_page(playground.url.as_str())
        .await
        .expect("the page opens");

    let seen = wait_for(&page, "three nodes and one leader", |seen| {
        seen["nodes"].as_array().unwrap().len() == 3 && serving_leaders(seen).len() == 1
    })
    .await;
    let (old_leader, old_term) = serving_leaders(&seen)[0];

    // The node cards are drawn anew with every update, so the button is found and clicked in one go.
    let clicked: bool = page
        .evaluate(format!(
            "(() => {{ const b = document.querySelector(\"button[data-action='isolate'][data-node='{old_leader}']\"); if (b) b.click(); return !!b; }})()"
        ))
        .await
        .expect("the page runs the script")
        .into_value()
        .expect("a boolean");
    assert!(clicked, "no isolate button under node {old_leader}");
    let seen = wait_for(
        &page,
        "a new leader in a higher term and the old one cut off",
        |seen| {
            let new_leader = serving_leaders(seen)
                .into_iter()
                .any(|(id, term)| id != old_leader && term > old_term);
            let old_cut_off = seen["nodes"]
                .as_array()
                .unwrap()
                .iter()
                .any(|node| node["id"] == old_leader && node["cutOff"] == true);
            new_leader && old_cut_off
        },
    )
    .await;
    assert!(
        seen["command"]
            .as_str()
            .unwrap()
            .contains(&format!("isolate {old_leader}")),
        "{seen:#}"
    );

    // A stale read on the isolated node, through the form.
    page.evaluate(format!(
        "(() => {{ document.getElementById('kv-op').value = 'get'; document.getElementById('kv-node').value = '{old_leader}'; document.getElementById('kv-consistency').value = 'stale'; }})()"
    ))
    .await
    .expect("the form is filled");
    page.find_element("#kv-run")
        .await
        .expect("the run button")
        .click()
        .await
        .expect("the click lands");
    let seen = wait_for(&page, "the stale read's answer", |seen| {
        !seen["answerOk"].is_null()
    })
    .await;
    let answer = expect_answer(&seen, true, &format!("served by node {old_leader}"));
    assert!(answer.contains("may be stale"), "{answer}");
    assert!(
        answer.contains("since it heard from a leader")
            || answer.contains("has not heard from a leader"),
        "{answer}"
    );
    let command = seen["command"].as_str().unwrap();
    assert!(command.contains("--consistency stale"), "{command}");
    if let Some(path) = std::env::var_os("RAFTKV_UI_SCREENSHOT") {
        let png = page
            .screenshot(ScreenshotParams::builder().full_page(true).build())
            .await
            .expect("a screenshot");
        std::fs::write(&path, png).expect("the screenshot is written");
    }

    page.find_element("#heal")
        .await
        .expect("the heal button")
        .click()
        .await
        .expect("the click lands");
    let seen = wait_for(
        &page,
        "one leader that every node follows",
        one_leader_every_node_follows,
    )
    .await;

    // The guided scenario, button by button.
    let (old_leader, old_term) = serving_leaders(&seen)[0];
    expect_answer(&guided_step(&page, "isolate").await, true, "");
    wait_for(&page, "a new leader after the guided isolate", |seen| {
        serving_leaders(seen)
            .into_iter()
            .any(|(id, term)| id != old_leader && term > old_term)
    })
    .await;
    let refused = guided_step(&page, "write-old").await;
    expect_answer(
        &refused,
        false,
        &format!("put scenario through node {old_leader}"),
    );
    let acknowledged = guided_step(&page, "write-new").await;
    expect_answer(&acknowledged, true, "acknowledged at revision");
    let stale = guided_step(&page, "stale-old").await;
    let answer = expect_answer(&stale, true, &format!("served by node {old_leader}"));
    assert!(answer.contains("may be stale"), "{answer}");
    // The old leader has neither write: its own was refused, the majority's never reached it.
    assert!(answer.starts_with("scenario = absent;"), "{answer}");
    let linearizable = guided_step(&page, "linear-old").await;
    let refusal = format!("read of scenario on node {old_leader} refused");
    expect_answer(&linearizable, false, &refusal);
    expect_answer(&guided_step(&page, "heal").await, true, "");
    wait_for(
        &page,
        "one leader that every node follows after the guided heal",
        one_leader_every_node_follows,
    )
    .await;

    // Stopped with the page still open (its event stream too): the playground must not wait on it.
    playground.stop().await;
    browser.close().await.expect("chromium closes");
    let _ = browser.wait().await;
    events.abort();
}
