//! `jepsen-lite net ...`: run the partition proxy mesh as a long-lived process (`net serve`) and drive it from
//! other processes (`net partition 1,2/3`, `net isolate 2`, `net heal`, `net ring`, `net bridge`,
//! `net one-way 1 2`, `net delay 50ms [--link 1-2]`, `net reset 1 2`, `net member 2 8e9e05c52164694d`,
//! `net status`). Client commands validate their input locally, send one control request (see
//! `jepsen_lite::net` control protocol) and print every link's state afterwards.
//!
//! `net serve` prints, on stdout, one line per node with its `--peer-route` arguments
//! (`node 1 --peer-route 2=127.0.0.1:7112 --peer-route 3=127.0.0.1:7113`), then `ready control=IP:PORT` once
//! the control port answers; with `--routes-file` it first writes the same map as JSON (a `RoutesFile`).
//! With `--attribute header` every route to node j is j's front (`node 1 --peer-route 2=127.0.0.1:7102 ...`):
//! the address node j advertises to its peers.

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Args, Subcommand, ValueEnum};
use jepsen_lite::net::{
    parse_duration, parse_groups, parse_link, parse_nodes, request, serve_control, Attribution,
    Command, LinkStatus, MemberId, Mesh, PortLayout, RoutesFile,
};
use tokio::net::TcpListener;
use tokio::signal::unix::{signal, SignalKind};
use tracing::info;

#[derive(Debug, Subcommand)]
pub enum NetCommand {
    /// Run the proxy mesh until SIGTERM or SIGINT and print each node's --peer-route arguments
    Serve(ServeArgs),
    /// Cut every link between groups and let links within a group pass, e.g. `1,2/3`
    Partition {
        /// Groups separated by '/', node ids in a group by ',' (every node exactly once)
        groups: String,
        #[command(flatten)]
        control: ControlArgs,
    },
    /// Cut one node off from all the others
    Isolate {
        id: u64,
        #[command(flatten)]
        control: ControlArgs,
    },
    /// Let every link pass again
    Heal {
        #[command(flatten)]
        control: ControlArgs,
    },
    /// Majorities ring: every node sees a majority, no two the same one (4 or more nodes)
    Ring {
        #[command(flatten)]
        control: ControlArgs,
    },
    /// Two halves that reach each other only through one bridge node (3 or more nodes)
    Bridge {
        #[command(flatten)]
        control: ControlArgs,
    },
    /// Cut both links between nodes A and B: they cannot reach each other, everyone else can
    Cut {
        a: u64,
        b: u64,
        #[command(flatten)]
        control: ControlArgs,
    },
    /// Hold bytes from FROM toward TO on link FROM->TO; replies still flow
    OneWay {
        from: u64,
        to: u64,
        #[command(flatten)]
        control: ControlArgs,
    },
    /// Delay every link (or one) by DELAY in each direction, e.g. 50ms
    Delay {
        /// A whole number and a unit: us, ms or s
        delay: String,
        /// Delay only this link, written FROM-TO
        #[arg(long, value_name = "FROM-TO")]
        link: Option<String>,
        #[command(flatten)]
        control: ControlArgs,
    },
    /// Close every connection on link FROM->TO and reset new ones until healed
    Reset {
        from: u64,
        to: u64,
        #[command(flatten)]
        control: ControlArgs,
    },
    /// Print every link's state
    Status {
        #[command(flatten)]
        control: ControlArgs,
    },
    /// Register the member id that node ID's requests name as their sender (a mesh served with
    /// --attribute header; etcd: `etcdctl member list --hex`)
    Member {
        id: u64,
        /// The member id in hex, e.g. 8e9e05c52164694d
        member: String,
        #[command(flatten)]
        control: ControlArgs,
    },
}

/// `--attribute`: how the mesh tells which node opened a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum AttributeArg {
    /// One proxy per directed link i->j; node i dials link i->j's port (raftkv's --peer-route)
    Port,
    /// One proxy (front) per node that every peer dials; the X-Server-From header of each connection's HTTP
    /// requests names the dialling member (etcd's peer traffic, plaintext); register ids with `net member`
    Header,
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// The nodes and their real addresses
    #[arg(long, value_name = "ID=IP:PORT,...")]
    nodes: String,
    /// Link i->j listens on PORT + 10*i + j, or with --attribute header node j's front on PORT + j (node ids
    /// 1..=9); without it the OS picks free ports
    #[arg(long, value_name = "PORT")]
    base_port: Option<u16>,
    /// How the mesh tells which node opened a connection
    #[arg(long, value_enum, default_value_t = AttributeArg::Port)]
    attribute: AttributeArg,
    /// Where to answer control requests (port 0 lets the OS pick; the address is printed)
    #[arg(long, env = "JEPSEN_LITE_CONTROL", value_name = "IP:PORT")]
    control: SocketAddr,
    /// Also write the routes and control address as JSON to this file
    #[arg(long, value_name = "FILE")]
    routes_file: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct ControlArgs {
    /// The control address of a running `jepsen-lite net serve`
    #[arg(long, env = "JEPSEN_LITE_CONTROL", value_name = "HOST:PORT")]
    control: String,
    /// Print the links as one JSON array instead of a table
    #[arg(long)]
    json: bool,
}

pub async fn run(command: NetCommand) -> anyhow::Result<ExitCode> {
    let (request_command, control) = match command {
        NetCommand::Serve(args) => {
            serve(args).await?;
            return Ok(ExitCode::SUCCESS);
        }
        NetCommand::Partition { groups, control } => {
            (Command::Partition(parse_groups(&groups)?), control)
        }
        NetCommand::Isolate { id, control } => (Command::Isolate(id), control),
        NetCommand::Heal { control } => (Command::Heal, control),
        NetCommand::Ring { control } => (Command::Ring, control),
        NetCommand::Bridge { control } => (Command::Bridge, control),
        NetCommand::Cut { a, b, control } => (Command::Cut { a, b }, control),
        NetCommand::OneWay { from, to, control } => (Command::OneWay { from, to }, control),
        NetCommand::Reset { from, to, control } => (Command::Reset { from, to }, control),
        NetCommand::Delay {
            delay,
            link,
            control,
        } => {
            let delay: Duration = parse_duration(&delay)?;
            let link = link.as_deref().map(parse_link).transpose()?;
            (Command::Delay { delay, link }, control)
        }
        NetCommand::Status { control } => (Command::Status, control),
        NetCommand::Member {
            id,
            member,
            control,
        } => {
            let member: MemberId = member.parse()?;
            (Command::Member { node: id, member }, control)
        }
    };
    let links = request(&control.control, &request_command).await?;
    if control.json {
        println!("{}", serde_json::to_string(&links)?);
    } else {
        print!("{}", render_links(&links));
    }
    Ok(ExitCode::SUCCESS)
}

/// Runs the mesh and its control port until SIGTERM or SIGINT, then stops every link.
async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let nodes = parse_nodes(&args.nodes)?;
    let layout = args
        .base_port
        .map_or(PortLayout::OsAssigned, PortLayout::Base);
    // Registered before `ready` is printed, so a supervisor may signal as soon as it reads that line.
    let mut terminate = signal(SignalKind::terminate()).context("cannot watch for SIGTERM")?;
    let attribution = match args.attribute {
        AttributeArg::Port => Attribution::Port,
        AttributeArg::Header => Attribution::Header,
    };
    let mesh = Mesh::start_attributed(nodes, layout, attribution).await?;
    let listener = TcpListener::bind(args.control)
        .await
        .with_context(|| format!("cannot listen for control requests on {}", args.control))?;
    let control = listener.local_addr()?;
    let routes = RoutesFile {
        control,
        nodes: mesh.routes(),
    };
    if let Some(path) = &args.routes_file {
        write_routes_file(path, &routes)?;
    }
    let mut stdout = std::io::stdout().lock();
    for node in &routes.nodes {
        writeln!(
            stdout,
            "node {} {}",
            node.id,
            node.peer_route_args().join(" ")
        )?;
    }
    writeln!(stdout, "ready control={control}")?;
    stdout.flush()?;
    drop(stdout);
    info!(%control, links = mesh.snapshot().len(), "mesh running");

    tokio::select! {
        () = serve_control(listener, &mesh) => {}
        _ = terminate.recv() => info!("SIGTERM: stopping the mesh"),
        result = tokio::signal::ctrl_c() => {
            result.context("cannot watch for SIGINT")?;
            info!("SIGINT: stopping the mesh");
        }
    }
    mesh.shutdown().await;
    Ok(())
}

/// Writes the routes as JSON next to `path`, then renames it into place, so a reader never sees half a file.
fn write_routes_file(path: &Path, routes: &RoutesFile) -> anyhow::Result<()> {
    let mut temporary = path.as_os_str().to_owned();
    temporary.push(".tmp");
    let temporary = PathBuf::from(temporary);
    let json = serde_json::to_string_pretty(routes)?;
    std::fs::write(&temporary, json + "\n")
        .with_context(|| format!("cannot write the routes file {}", temporary.display()))?;
    std::fs::rename(&temporary, path)
        .with_context(|| format!("cannot move the routes file into {}", path.display()))?;
    Ok(())
}

/// One row per link: `1->2  cut  1  127.0.0.1:41000  127.0.0.1:7002`.
fn render_links(links: &[LinkStatus]) -> String {
    let mut text = format!(
        "{:<8} {:<14} {:>11}  {:<21} {}\n",
        "LINK", "STATE", "CONNECTIONS", "LISTEN", "TARGET"
    );
    for link in links {
        text.push_str(&format!(
            "{:<8} {:<14} {:>11}  {:<21} {}\n",
            format!("{}->{}", link.from, link.to),
            link.state.to_string(),
            link.connections,
            link.listen,
            link.target
        ));
    }
    text
}
