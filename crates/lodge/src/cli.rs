//! Command-line surface: clap structs only, no logic. Each verb is handled by
//! the matching file in `cmd/`.

use std::ffi::OsString;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "lodge",
    version,
    about = "Run OCI container images as virtual machines",
    after_help = EXIT_CODES
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

/// The exit codes, as `lodge --help` shows them.
pub const EXIT_CODES: &str = "\
Exit codes:
  0    success
  1    some of several targets failed (rm, rmi, volume rm), or wait timed out
  2    lodge itself failed: bad usage, the daemon unreachable or refusing
  N    run, exec: the program's own exit code (128+SIGNAL if killed)
  124  exec --timeout: the command was killed
  255  exec: the command's exit status is unknown";

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Per-VM monitor: run CMD with its stdout/stderr captured into rotating logs
    Supervise(SuperviseArgs),
    /// Print (and follow) an instance's logs, or a log directory with --dir
    Logs(LogsArgs),
    /// Run the API daemon (LODGE_LISTEN, default 127.0.0.1:8080; LODGE_DATA_DIR)
    Serve(ServeArgs),
    /// Print an API token signed with this host's secret
    Token(TokenArgs),
    /// Create and boot an instance
    // Boxed: its flags make it far larger than the other variants.
    Run(Box<RunArgs>),
    /// List instances
    Ps(PsArgs),
    /// Stop an instance (graceful power-down, then force)
    Stop(InstanceArg),
    /// Boot a stopped instance again
    Start(InstanceArg),
    /// Put a running instance in standby (save its state to disk, VMM exits)
    Standby(StandbyArgs),
    /// Restore an instance from standby; the guest continues where it was
    Restore(InstanceArg),
    /// Wait until an instance is in a state (exit 1 on timeout)
    Wait(WaitArgs),
    /// Make a new instance from an instance or (with --snapshot) a snapshot
    Fork(ForkArgs),
    /// Snapshots of instances: create, ls, rm, restore
    #[command(subcommand)]
    Snapshot(SnapshotCommand),
    /// Delete instances
    Rm(RmArgs),
    /// Show an instance as JSON (or --format)
    Inspect(InspectArgs),
    /// Show what running instances cost the host (CPU, memory, network)
    Stats(StatsArgs),
    /// Change an instance's labels (hypeman's tags) without touching its VM
    Update(UpdateArgs),
    /// Give an image another name, without pulling (SOURCE TARGET)
    Tag(TagArgs),
    /// Host-wide views (`system df`: disk use and allocation; `system info`)
    System(SystemArgs),
    /// Run a command in a running instance
    Exec(ExecArgs),
    /// Copy files or directories between an instance and the host (INSTANCE:PATH on one side)
    Cp(CpArgs),
    /// Pull an image from a registry, or import oci-archive:PATH / docker-archive:PATH
    Pull(PullArgs),
    /// Push a local image to a registry (IMAGE TARGET)
    Push(PushArgs),
    /// List images
    Images(ImagesArgs),
    /// Delete images
    Rmi(RmiArgs),
    /// Manage volumes: persistent disks that outlive instances
    Volume(VolumeArgs),
    /// Host PCI devices for passthrough: available, add, ls, rm
    #[command(subcommand)]
    Device(DeviceCommand),
    /// Auto-standby of an instance: its status, or a hold that keeps it up
    #[command(subcommand)]
    AutoStandby(AutoStandbyCommand),
    /// Publish instances by hostname (HTTP) through lodge's ingress: create, ls, rm
    #[command(subcommand)]
    Ingress(IngressCommand),
    /// The ingress proxy process (started by the daemon)
    #[command(hide = true)]
    IngressProxy(IngressProxyArgs),
    /// Write an image (one layer per --layer directory) as an OCI or docker archive
    #[command(hide = true)]
    MkImage(MkImageArgs),
    /// Print shell completions (bash, zsh, fish, elvish, powershell)
    Completion(CompletionArgs),
    /// Write man pages (lodge.1, lodge-VERB.1, …) into DIR
    #[command(hide = true)]
    Man(ManArgs),
}

#[derive(Debug, Args)]
pub struct CompletionArgs {
    /// The shell to complete for
    pub shell: clap_complete::Shell,
}

#[derive(Debug, Args)]
pub struct ManArgs {
    /// Directory that receives the pages (created if needed)
    pub dir: PathBuf,
}

#[derive(Debug, Args)]
pub struct ExecArgs {
    /// Keep stdin open and send it to the command
    #[arg(short, long)]
    pub interactive: bool,
    /// Run the command on a terminal (raw mode here, window size followed)
    #[arg(short, long)]
    pub tty: bool,
    /// Environment variable for the command, K=V or K to pass on ours (repeatable)
    #[arg(short = 'e', long = "env")]
    pub env: Vec<String>,
    /// Working directory inside the instance (default: the workload's)
    #[arg(short = 'w', long)]
    pub cwd: Option<String>,
    /// Kill the command after this many seconds (exit code 124)
    #[arg(long)]
    pub timeout: Option<u32>,
    /// Seconds to wait for a booting instance and its guest agent
    #[arg(long, default_value_t = 0)]
    pub wait_for_agent: u32,
    /// Instance id, name or unique id prefix
    pub instance: String,
    /// The command and its arguments
    #[arg(required = true, num_args = 1.., trailing_var_arg = true, allow_hyphen_values = true)]
    pub command: Vec<String>,
}

#[derive(Debug, Args)]
#[command(
    after_help = "Copying out of an instance, the guest is not trusted: every entry lands \
inside DST (never through a symlink, nor through one the copy itself created), setuid and \
setgid bits are dropped unless -a is given, and device nodes are never created."
)]
pub struct CpArgs {
    /// Archive mode: keep uid and gid, and out of an instance its setuid/setgid bits
    #[arg(short, long)]
    pub archive: bool,
    /// Always follow symbolic links in SRC
    #[arg(short = 'L', long)]
    pub follow_link: bool,
    /// Source: a host path, or INSTANCE:PATH
    pub src: String,
    /// Destination: a host path, or INSTANCE:PATH
    pub dst: String,
}

#[derive(Debug, Args)]
pub struct PullArgs {
    /// Platform as os/arch[/variant] (default linux/amd64)
    #[arg(long)]
    pub platform: Option<String>,
    /// Print only the image name
    #[arg(short, long)]
    pub quiet: bool,
    /// Image reference (alpine, 127.0.0.1:5000/app:v1, name@sha256:…), oci-archive:PATH[:REF] or docker-archive:PATH[:REF]
    pub image: String,
}

#[derive(Debug, Args)]
pub struct PushArgs {
    /// Speak plain HTTP to the target's registry (loopback ones always are)
    #[arg(long)]
    pub insecure: bool,
    /// Print only TARGET@DIGEST
    #[arg(short, long)]
    pub quiet: bool,
    /// The local image (name or digest form)
    pub image: String,
    /// The remote reference to push to (host[:port]/repo[:tag])
    pub target: String,
}

#[derive(Debug, Subcommand)]
pub enum DeviceCommand {
    /// The host's PCI devices (driver, IOMMU group)
    Available,
    /// Register a host PCI device for passthrough
    Add(DeviceAddArgs),
    /// List registered devices
    Ls(DeviceLsArgs),
    /// Unregister devices (refused while an instance uses one)
    Rm(DeviceRmArgs),
}

#[derive(Debug, Args)]
pub struct DeviceAddArgs {
    /// Device name (default pci-<address>)
    #[arg(long)]
    pub name: Option<String>,
    /// Tag, K=V (repeatable)
    #[arg(long = "tag")]
    pub tags: Vec<String>,
    /// PCI address, DDDD:BB:DD.F (e.g. 0000:a2:00.0)
    pub pci_address: String,
}

#[derive(Debug, Args)]
pub struct DeviceLsArgs {
    /// Print only names
    #[arg(short, long)]
    pub quiet: bool,
}

#[derive(Debug, Args)]
pub struct DeviceRmArgs {
    /// Device ids or names
    #[arg(required = true)]
    pub devices: Vec<String>,
}

#[derive(Debug, Args)]
pub struct VolumeArgs {
    #[command(subcommand)]
    pub command: VolumeCommand,
}

#[derive(Debug, Subcommand)]
pub enum VolumeCommand {
    /// Create an empty volume
    Create(VolumeCreateArgs),
    /// List volumes
    Ls(VolumeLsArgs),
    /// Show a volume as JSON
    Inspect(VolumeKeyArg),
    /// Delete volumes (refused while attached)
    Rm(VolumeRmArgs),
    /// Create a volume from a tar archive (tar.gz, tar.zst or tar)
    Import(VolumeImportArgs),
}

#[derive(Debug, Args)]
pub struct VolumeCreateArgs {
    /// Size in GB (a sparse file: only what is written takes room)
    #[arg(long)]
    pub size: u64,
    /// A custom id (generated if absent)
    #[arg(long)]
    pub id: Option<String>,
    /// Tag, K=V (repeatable)
    #[arg(long = "tag")]
    pub tags: Vec<String>,
    /// Volume name
    pub name: String,
}

#[derive(Debug, Args)]
pub struct VolumeLsArgs {
    /// Print only names
    #[arg(short, long)]
    pub quiet: bool,
}

#[derive(Debug, Args)]
pub struct VolumeKeyArg {
    /// Volume id or name
    pub volume: String,
}

#[derive(Debug, Args)]
pub struct VolumeRmArgs {
    /// Volume ids or names
    #[arg(required = true)]
    pub volumes: Vec<String>,
}

#[derive(Debug, Args)]
pub struct VolumeImportArgs {
    /// Size in GB; the content must fit (default: sized from the content)
    #[arg(long)]
    pub size: Option<u64>,
    /// A custom id (generated if absent)
    #[arg(long)]
    pub id: Option<String>,
    /// Tag, K=V (repeatable)
    #[arg(long = "tag")]
    pub tags: Vec<String>,
    /// Volume name
    pub name: String,
    /// The archive
    pub archive: PathBuf,
}

#[derive(Debug, Args)]
pub struct ImagesArgs {
    /// Print only names
    #[arg(short, long)]
    pub quiet: bool,
    /// Only images matching label=K=V or label=K (repeatable, all must match)
    #[arg(short, long = "filter", value_name = "FILTER")]
    pub filters: Vec<String>,
    /// Output: table, json (one object per line) or a template like '{{.ID}} {{.Name}}'
    #[arg(long, value_name = "FORMAT")]
    pub format: Option<String>,
}

#[derive(Debug, Args)]
pub struct RmiArgs {
    /// Image names
    #[arg(required = true)]
    pub images: Vec<String>,
}

#[derive(Debug, Args)]
pub struct MkImageArgs {
    /// A directory whose tree becomes one layer (repeatable, bottom first)
    #[arg(long = "layer", required = true)]
    pub layers: Vec<PathBuf>,
    /// Name recorded in the archive (e.g. lodge-demo:latest)
    #[arg(long)]
    pub name: Option<String>,
    /// Entrypoint argument (repeatable, in order)
    #[arg(long = "entrypoint", allow_hyphen_values = true)]
    pub entrypoint: Vec<String>,
    /// Environment variable, K=V (repeatable)
    #[arg(short = 'e', long = "env")]
    pub env: Vec<String>,
    /// Working directory
    #[arg(short = 'w', long)]
    pub workdir: Option<String>,
    /// User to run as
    #[arg(long)]
    pub user: Option<String>,
    /// Write docker-archive format instead of oci-archive
    #[arg(long)]
    pub docker: bool,
    /// Output file
    #[arg(short, long)]
    pub output: PathBuf,
    /// The image's CMD, after `--`
    #[arg(last = true)]
    pub cmd: Vec<String>,
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Format of the daemon's own log on stderr
    #[arg(long, value_enum, env = "LODGE_LOG_FORMAT", default_value = "text")]
    pub log_format: LogFormat,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum LogFormat {
    /// One human-readable line per event
    Text,
    /// One JSON object per line (timestamp, level, fields, the request's span)
    Json,
}

#[derive(Debug, Args)]
pub struct TokenArgs {
    /// Lifetime of the token in seconds
    #[arg(long, default_value_t = 30 * 24 * 3600)]
    pub ttl: u64,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Instance name (lowercase letters, digits, dashes); generated if absent
    #[arg(long)]
    pub name: Option<String>,
    /// Virtual CPUs
    #[arg(long)]
    pub cpus: Option<u32>,
    /// Memory, e.g. 512MB or 1GB
    #[arg(long)]
    pub memory: Option<String>,
    /// Size of the writable overlay disk, e.g. 1GB
    #[arg(long)]
    pub overlay_size: Option<String>,
    /// Environment variable for the program, K=V (repeatable)
    #[arg(short = 'e', long = "env")]
    pub env: Vec<String>,
    /// Override the entrypoint (a single executable)
    #[arg(long)]
    pub entrypoint: Option<String>,
    /// Working directory of the program
    #[arg(short = 'w', long)]
    pub workdir: Option<String>,
    /// Return as soon as the VM is booting and print its id
    #[arg(short, long, conflicts_with = "rm")]
    pub detach: bool,
    /// Delete the instance once its program has exited
    #[arg(long)]
    pub rm: bool,
    /// On a terminal, print the console's control characters as they are
    /// instead of escaped (\x1b); output to a pipe or file is always byte-exact
    #[arg(long)]
    pub raw: bool,
    /// Boot this host directory as the root file system
    #[arg(long)]
    pub rootfs: Option<PathBuf>,
    /// `none`: boot without a network device (default: the daemon's
    /// default network, when it has one)
    #[arg(long, value_name = "NETWORK", value_parser = ["none", "default"])]
    pub network: Option<String>,
    /// Limit host→guest traffic, e.g. 100Mbps, 1Gbps or 125MB/s
    #[arg(long, value_name = "RATE")]
    pub bandwidth_down: Option<String>,
    /// Limit guest→host traffic, e.g. 100Mbps, 1Gbps or 125MB/s
    #[arg(long, value_name = "RATE")]
    pub bandwidth_up: Option<String>,
    /// Label (hypeman's tag) K=V (repeatable)
    #[arg(short = 'l', long = "label", value_name = "K=V")]
    pub labels: Vec<String>,
    /// Delete the instance this long after it is created (e.g. 30m, 1h)
    #[arg(long, value_name = "DURATION")]
    pub ttl: Option<String>,
    /// Restart policy: no, always, on-failure[:MAX_ATTEMPTS]
    #[arg(long, value_name = "POLICY")]
    pub restart: Option<String>,
    /// Put the instance in standby after this long without inbound TCP
    /// connections (e.g. 30s, 10m; hypeman's auto_standby.idle_timeout)
    #[arg(long, value_name = "DURATION")]
    pub auto_standby: Option<String>,
    /// Health check: a shell command run in the guest, healthy on exit 0
    #[arg(long, value_name = "CMD")]
    pub health_cmd: Option<String>,
    /// Time between health checks (default 10s)
    #[arg(long, value_name = "DURATION", requires = "health_cmd")]
    pub health_interval: Option<String>,
    /// Longest a health check may take (default 5s)
    #[arg(long, value_name = "DURATION", requires = "health_cmd")]
    pub health_timeout: Option<String>,
    /// Consecutive failures before unhealthy (default 3)
    #[arg(long, value_name = "N", requires = "health_cmd")]
    pub health_retries: Option<u32>,
    /// Failures do not count this long after a boot
    #[arg(long, value_name = "DURATION", requires = "health_cmd")]
    pub health_start_period: Option<String>,
    /// Attach a volume, VOLUME:/PATH[:ro] (repeatable)
    #[arg(short = 'v', long = "volume", value_name = "VOLUME:/PATH[:ro]")]
    pub volumes: Vec<String>,
    /// Publish a guest TCP port on a host port, HOSTPORT:GUESTPORT[/tcp]
    /// (repeatable): an ingress `<name>-ports` with one tcp rule each
    #[arg(short = 'p', long = "publish", value_name = "HOSTPORT:GUESTPORT")]
    pub publish: Vec<String>,
    /// IMAGE (unless --rootfs) followed by the command and its arguments
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub args: Vec<String>,
}

#[derive(Debug, Args)]
pub struct PsArgs {
    /// Show all instances (default: only those not stopped)
    #[arg(short, long)]
    pub all: bool,
    /// Print only ids
    #[arg(short, long)]
    pub quiet: bool,
    /// Only instances matching: label=K=V, label=K, state=STATE (repeatable, all must match)
    #[arg(short, long = "filter", value_name = "FILTER")]
    pub filters: Vec<String>,
    /// Output: table, json (one object per line) or a template like '{{.ID}} {{.Name}}'
    #[arg(long, value_name = "FORMAT")]
    pub format: Option<String>,
}

#[derive(Debug, Args)]
pub struct UpdateArgs {
    /// Add or change a label K=V (repeatable)
    #[arg(short = 'l', long = "label", value_name = "K=V")]
    pub labels: Vec<String>,
    /// Remove the label K (repeatable)
    #[arg(long = "label-rm", value_name = "K")]
    pub remove: Vec<String>,
    /// Auto-standby after DURATION idle (e.g. 30s), or `off`
    #[arg(long, value_name = "DURATION|off")]
    pub auto_standby: Option<String>,
    /// Instance id, name or unique id prefix
    pub instance: String,
}

#[derive(Debug, Args)]
pub struct SystemArgs {
    #[command(subcommand)]
    pub command: SystemCommand,
}

#[derive(Debug, Subcommand)]
pub enum SystemCommand {
    /// Disk used by images, the layer cache, overlays and volumes; vCPU and memory allocation
    Df(DfArgs),
    /// Versions, accelerator, hypervisors found, data dir, disk use
    Info(InfoArgs),
}

#[derive(Debug, Args)]
pub struct InfoArgs {
    /// Print JSON
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct DfArgs {
    /// Print the API's JSON (GET /resources)
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct TagArgs {
    /// The image to name again
    pub source: String,
    /// The new name, an image reference with a tag
    pub target: String,
}

#[derive(Debug, Args)]
pub struct StatsArgs {
    /// Redraw every --interval seconds, with CPU% between samples
    #[arg(short, long)]
    pub watch: bool,
    /// Seconds between samples with --watch
    #[arg(long, default_value_t = 2)]
    pub interval: u64,
    /// Print the API's JSON (one-shot only)
    #[arg(long, conflicts_with = "watch")]
    pub json: bool,
    /// Instance ids, names or unique id prefixes
    #[arg(required = true)]
    pub instances: Vec<String>,
}

#[derive(Debug, Args)]
pub struct InspectArgs {
    /// Output: indented JSON (default), json (one line) or a template like '{{.State}}'
    #[arg(short, long, value_name = "FORMAT")]
    pub format: Option<String>,
    /// Instance id, name or unique id prefix
    pub instance: String,
}

#[derive(Debug, Args)]
pub struct InstanceArg {
    /// Instance id, name or unique id prefix
    pub instance: String,
}

#[derive(Debug, Args)]
pub struct StandbyArgs {
    /// Instance id, name or unique id prefix
    pub instance: String,
    /// Compress the saved memory in the background (restore decompresses it)
    #[arg(long, value_parser = ["zstd", "lz4"])]
    pub compress: Option<String>,
    /// Compression level (zstd 1-19, lz4 0-9)
    #[arg(long, requires = "compress")]
    pub level: Option<u32>,
    /// Wait this long (Go duration) before compressing
    #[arg(long, requires = "compress")]
    pub compress_after: Option<String>,
}

#[derive(Debug, Args)]
pub struct WaitArgs {
    /// Instance id, name or unique id prefix
    pub instance: String,
    /// The state to wait for (Running, Standby, Stopped, …)
    pub state: String,
    /// How long to wait, as a Go duration (at most 5m)
    #[arg(long, default_value = "60s")]
    pub timeout: String,
}

#[derive(Debug, Args)]
pub struct ForkArgs {
    /// Source instance (id, name or unique id prefix), or snapshot id with --snapshot
    pub source: String,
    /// Name of the new instance
    pub name: String,
    /// SOURCE is a snapshot
    #[arg(long)]
    pub snapshot: bool,
    /// Allow a running source (it sleeps briefly for the copy)
    #[arg(long)]
    pub from_running: bool,
    /// State of the fork when done (default: the source's)
    #[arg(long, value_parser = ["running", "standby", "stopped"])]
    pub state: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum SnapshotCommand {
    /// Take a snapshot of an instance
    Create(SnapshotCreateArgs),
    /// List snapshots
    Ls(SnapshotLsArgs),
    /// Delete snapshots
    Rm(SnapshotRmArgs),
    /// Restore a snapshot into its instance (stopped or in standby)
    Restore(SnapshotRestoreArgs),
}

#[derive(Debug, Args)]
pub struct SnapshotCreateArgs {
    /// Instance id, name or unique id prefix
    pub instance: String,
    /// `standby`: disks and memory (a running instance sleeps briefly);
    /// `stopped`: disks only (the instance must be stopped or in standby)
    #[arg(long, default_value = "standby", value_parser = ["standby", "stopped"])]
    pub kind: String,
    /// Snapshot name (lowercase letters, digits, dashes)
    #[arg(long)]
    pub name: Option<String>,
    /// Tag KEY=VALUE (repeatable)
    #[arg(long = "tag")]
    pub tags: Vec<String>,
}

#[derive(Debug, Args)]
pub struct SnapshotLsArgs {
    /// Only snapshots of this instance (id)
    #[arg(long)]
    pub instance: Option<String>,
    /// Only ids
    #[arg(short, long)]
    pub quiet: bool,
}

#[derive(Debug, Args)]
pub struct SnapshotRmArgs {
    /// Snapshot ids (or unique id prefixes)
    #[arg(required = true)]
    pub snapshots: Vec<String>,
}

#[derive(Debug, Args)]
pub struct SnapshotRestoreArgs {
    /// Instance id, name or unique id prefix
    pub instance: String,
    /// Snapshot id (or unique id prefix)
    pub snapshot: String,
    /// State to leave the instance in (default: running for a standby
    /// snapshot, stopped for a stopped one)
    #[arg(long, value_parser = ["running", "standby", "stopped"])]
    pub state: Option<String>,
}

#[derive(Debug, Args)]
pub struct RmArgs {
    /// Stop running instances first
    #[arg(short, long)]
    pub force: bool,
    /// Instance ids, names or unique id prefixes
    #[arg(required = true)]
    pub instances: Vec<String>,
}

#[derive(Debug, Args)]
pub struct SuperviseArgs {
    /// Directory that receives app.log (stdout) and vmm.log (stderr); must exist
    #[arg(long)]
    pub log_dir: PathBuf,
    /// Rotate a log once it reaches this size (65536, 64KiB, 64K, 50MB, 1GiB)
    // Kept as text (validated by `cmd::supervise`) so a bad value gets the
    // same one-line error as every other bad input, not clap's usage block.
    #[arg(long, default_value = "50MiB", allow_hyphen_values = true)]
    pub max_size: String,
    /// Rotated segments kept per log (at least 1)
    #[arg(long, default_value = "5", allow_hyphen_values = true)]
    pub max_files: String,
    /// Give the command a pipe as this descriptor (3 or more) for the
    /// guest's status channel, kept as a bounded status.log and
    /// guest-status.json
    #[arg(long, allow_hyphen_values = true)]
    pub status_fd: Option<String>,
    /// Give the command a pipe as this descriptor (3 or more, not the
    /// status one) for the workload's fast console, merged into app.log
    /// with stdout at line boundaries
    #[arg(long, allow_hyphen_values = true)]
    pub console_fd: Option<String>,
    /// The command to run, after `--`
    #[arg(last = true, num_args = 0..)]
    pub command: Vec<OsString>,
}

#[derive(Debug, Args)]
pub struct LogsArgs {
    /// Read this log directory directly instead of asking the daemon
    #[arg(long, conflicts_with = "instance")]
    pub dir: Option<PathBuf>,
    /// Which log: app (console), vmm (hypervisor), lodge (lodge's actions; alias hypeman)
    #[arg(long, default_value = "app")]
    pub source: String,
    /// Lines to print from the end, or `all`
    #[arg(long, default_value = "100")]
    pub tail: String,
    /// Keep printing new output as it is written
    #[arg(short, long)]
    pub follow: bool,
    /// On a terminal, print control characters as they are instead of
    /// escaped (\x1b); output to a pipe or file is always byte-exact
    #[arg(long)]
    pub raw: bool,
    /// Prefix each line with the time it was written (RFC 3339, UTC)
    #[arg(short = 't', long)]
    pub timestamps: bool,
    /// Only lines written at or after this time: RFC 3339, Unix seconds,
    /// or a duration ago (10m, 1h30m)
    #[arg(long)]
    pub since: Option<String>,
    /// Only lines written before this time (same forms as --since)
    #[arg(long, conflicts_with = "follow")]
    pub until: Option<String>,
    /// Instance id, name or unique id prefix
    #[arg(required_unless_present = "dir")]
    pub instance: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum AutoStandbyCommand {
    /// Whether auto-standby applies, what keeps the instance up, when it goes
    Status(AutoStandbyStatusArgs),
    /// Keep the instance from auto-standby for a while (default: its idle timeout)
    Hold(AutoStandbyHoldArgs),
    /// End a hold
    Release(InstanceArg),
}

#[derive(Debug, Args)]
pub struct AutoStandbyStatusArgs {
    /// Print the API's JSON
    #[arg(long)]
    pub json: bool,
    /// Instance id, name or unique id prefix
    pub instance: String,
}

#[derive(Debug, Args)]
pub struct AutoStandbyHoldArgs {
    /// How long to hold (Go duration, e.g. 10m)
    #[arg(long = "for", value_name = "DURATION")]
    pub duration: Option<String>,
    /// Instance id, name or unique id prefix
    pub instance: String,
}

#[derive(Debug, Subcommand)]
pub enum IngressCommand {
    /// Route HOSTNAME on a host port to a port of INSTANCE
    Create(IngressCreateArgs),
    /// List ingresses
    Ls(IngressLsArgs),
    /// Delete ingresses
    Rm(IngressRmArgs),
}

#[derive(Debug, Args)]
pub struct IngressCreateArgs {
    /// Target instance (name or id), or a capture of the hostname such as {instance}
    pub instance: String,
    /// Hostname to match: api.example.com, or a pattern like {instance}.example.com
    #[arg(long)]
    pub hostname: String,
    /// The instance's port to forward to
    #[arg(short, long)]
    pub port: i64,
    /// Host port to listen on
    #[arg(long, default_value_t = 80)]
    pub host_port: i64,
    /// Ingress name (default: derived from the hostname)
    #[arg(long)]
    pub name: Option<String>,
    /// Require this request header: NAME=VALUE (401 otherwise)
    #[arg(long)]
    pub header_auth: Option<String>,
    /// Tag as KEY=VALUE (repeatable)
    #[arg(long = "tag")]
    pub tags: Vec<String>,
}

#[derive(Debug, Args)]
pub struct IngressLsArgs {
    /// Print only names
    #[arg(short, long)]
    pub quiet: bool,
}

#[derive(Debug, Args)]
pub struct IngressRmArgs {
    /// Ingress ids or names
    #[arg(required = true)]
    pub ingresses: Vec<String>,
}

#[derive(Debug, Args)]
pub struct IngressProxyArgs {
    /// `<data dir>/ingress`
    #[arg(long)]
    pub ingress_dir: PathBuf,
    /// Address the rule ports are bound on
    #[arg(long, default_value = "0.0.0.0")]
    pub address: std::net::IpAddr,
}
