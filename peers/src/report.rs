//! The report: the header (machine, command, configuration), the markdown tables and the SVG
//! charts.

use std::fmt::Write as _;
use std::path::Path;

use plotters::prelude::*;

use crate::{Cell, Options, PIPE_BUFFER, SIZES, System, Workload, peer_rows, ring_bytes};

/// What the report says about the machine and the run.
pub struct Machine {
    pub cpu: String,
    pub cpus: usize,
    pub kernel: String,
    pub date: String,
    pub command: String,
    pub python: Option<String>,
    pub load_start: String,
}

impl Machine {
    pub fn read(_opts: &Options, python: Option<String>) -> Machine {
        let cpu = run_cmd("lscpu", &[])
            .and_then(|out| {
                out.lines()
                    .find(|l| l.trim_start().starts_with("Model name:"))
                    .map(|l| l.split_once(':').map_or("", |(_, v)| v).trim().to_string())
            })
            .unwrap_or_else(|| "unknown CPU".into());
        Machine {
            cpu,
            cpus: online_cpus(),
            kernel: run_cmd("uname", &["-r"]).map_or_else(|| "?".into(), |s| s.trim().into()),
            date: run_cmd("date", &["-u", "+%Y-%m-%d %H:%M UTC"])
                .map_or_else(|| "?".into(), |s| s.trim().into()),
            command: std::env::args().collect::<Vec<_>>().join(" "),
            python,
            load_start: loadavg(),
        }
    }
}

/// CPUs online (not the harness's affinity mask, which is one CPU once it is pinned).
fn online_cpus() -> usize {
    // SAFETY: sysconf only reads a system value.
    let n = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
    usize::try_from(n).unwrap_or(0)
}

fn run_cmd(cmd: &str, args: &[&str]) -> Option<String> {
    let out = std::process::Command::new(cmd).args(args).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The first three fields of /proc/loadavg.
pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

pub fn header(m: &Machine, method: &str, notes: &[String]) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "# forkipc and its peers, {}\n", m.date);
    let _ = writeln!(
        s,
        "- machine: {}, {} CPUs, Linux {}; load average at the start: {}",
        m.cpu, m.cpus, m.kernel, m.load_start
    );
    let _ = writeln!(s, "- command: `{}` (in `peers/`)", m.command);
    let _ = writeln!(
        s,
        "- {method}; parent pinned to CPU 0, forked child to CPU 1; a fresh child per \
         repetition"
    );
    let pipe = peer_rows::pipe_buffer_effective()
        .map_or_else(|e| format!("? ({e})"), |b| human_bytes(b as f64));
    let (snd, rcv) = peer_rows::socket_buffers_effective().map_or_else(
        |e| (format!("? ({e})"), String::new()),
        |(s, r)| (human_bytes(s as f64), human_bytes(r as f64)),
    );
    let _ = writeln!(
        s,
        "- configuration: forkipc wait policy {:?} (default); byte rings and ipmpsc rings \
         {} (1 MiB messages: {}); typed u64 channel {} messages; pipe buffer {} (asked {}); \
         socketpair SO_SNDBUF {snd}, SO_RCVBUF {rcv} as reported by the kernel (asked {}); \
         Python {}",
        forkipc::WaitPolicy::default(),
        human_bytes(ring_bytes(8) as f64),
        human_bytes(ring_bytes(1 << 20) as f64),
        crate::forkipc_rows::TYPED_CAPACITY,
        pipe,
        human_bytes(PIPE_BUFFER as f64),
        human_bytes(peer_rows::SOCKET_BUFFER as f64),
        m.python.as_deref().unwrap_or("not run"),
    );
    for note in notes {
        let _ = writeln!(s, "- note: {note}");
    }
    s.push('\n');
    s
}

/// (min, median, max) of a cell's samples.
fn stats(samples: &[f64]) -> Option<(f64, f64, f64)> {
    if samples.is_empty() {
        return None;
    }
    let mut v = samples.to_vec();
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    let median = if v.len() % 2 == 1 {
        v[mid]
    } else {
        (v[mid - 1] + v[mid]) / 2.0
    };
    Some((v[0], median, v[v.len() - 1]))
}

/// Three significant digits.
fn sig3(x: f64) -> String {
    if x >= 100.0 {
        format!("{x:.0}")
    } else if x >= 10.0 {
        format!("{x:.1}")
    } else {
        format!("{x:.2}")
    }
}

/// `median unit (min–max)` in the unit that suits the median. `units` are (scale, name) from
/// the smallest up.
fn triple(s: (f64, f64, f64), units: &[(f64, &str)]) -> String {
    let (lo, med, hi) = s;
    let (scale, name) = units
        .iter()
        .rev()
        .find(|(scale, _)| med >= *scale)
        .unwrap_or(&units[0]);
    format!(
        "{} {name} ({}–{})",
        sig3(med / scale),
        sig3(lo / scale),
        sig3(hi / scale)
    )
}

const TIME_UNITS: [(f64, &str); 3] = [(1.0, "ns"), (1e3, "µs"), (1e6, "ms")];
const BYTE_RATE_UNITS: [(f64, &str); 3] = [(1e3, "kB/s"), (1e6, "MB/s"), (1e9, "GB/s")];
const MSG_RATE_UNITS: [(f64, &str); 3] = [(1.0, "/s"), (1e3, "k/s"), (1e6, "M/s")];

pub fn human_bytes(b: f64) -> String {
    if b >= (1 << 20) as f64 {
        format!("{} MiB", sig3(b / (1 << 20) as f64))
    } else if b >= 1024.0 {
        format!("{} KiB", sig3(b / 1024.0))
    } else {
        format!("{b:.0} B")
    }
}

fn size_label(size: usize) -> String {
    match size {
        s if s >= 1 << 20 => format!("{} MiB", s >> 20),
        s if s >= 1 << 10 => format!("{} KiB", s >> 10),
        s => format!("{s} B"),
    }
}

pub fn tables(cells: &[Cell], systems: &[System]) -> String {
    let reps = cells.first().map_or(0, |c| c.samples.len());
    let mut s = String::new();
    let table = |s: &mut String, title: &str, workload: Workload, fmt: &dyn Fn(&Cell) -> String| {
        let _ = writeln!(s, "## {title}\n");
        let _ = write!(s, "| system |");
        for size in SIZES {
            let _ = write!(s, " {} |", size_label(size));
        }
        let _ = write!(s, "\n|---|");
        for _ in SIZES {
            let _ = write!(s, "---:|");
        }
        s.push('\n');
        for &system in systems {
            let _ = write!(s, "| {} |", system.name());
            for size in SIZES {
                let cell = cells
                    .iter()
                    .find(|c| c.system == system && c.workload == workload && c.size == size);
                let _ = write!(s, " {} |", cell.map_or_else(|| "–".into(), fmt));
            }
            s.push('\n');
        }
        s.push('\n');
    };
    table(
        &mut s,
        &format!("Round-trip time: median (min–max) over {reps} repetitions, lower is better"),
        Workload::Rtt,
        &|c| stats(&c.samples).map_or("–".into(), |t| triple(t, &TIME_UNITS)),
    );
    table(
        &mut s,
        &format!(
            "One-way stream, bytes per second: median (min–max) over {reps} repetitions, \
             higher is better"
        ),
        Workload::Stream,
        &|c| stats(&c.samples).map_or("–".into(), |t| triple(t, &BYTE_RATE_UNITS)),
    );
    table(
        &mut s,
        &format!("One-way stream, messages per second: median (min–max) over {reps} repetitions"),
        Workload::Stream,
        &|c| {
            let per_msg: Vec<f64> = c.samples.iter().map(|b| b / c.size as f64).collect();
            stats(&per_msg).map_or("–".into(), |t| triple(t, &MSG_RATE_UNITS))
        },
    );
    s
}

// ---------------------------------------------------------------------------------------------
// Charts

const COLORS: [RGBColor; 8] = [
    RGBColor(214, 39, 40),   // forkipc bytes: red
    RGBColor(255, 127, 14),  // forkipc zero-copy: orange
    RGBColor(140, 86, 75),   // forkipc typed: brown
    RGBColor(31, 119, 180),  // pipe: blue
    RGBColor(44, 160, 44),   // socketpair: green
    RGBColor(148, 103, 189), // ipc-channel: purple
    RGBColor(23, 190, 207),  // ipmpsc: cyan
    RGBColor(127, 127, 127), // python: grey
];

fn color(system: System) -> RGBColor {
    let i = System::ALL.iter().position(|s| *s == system).unwrap_or(0);
    COLORS[i % COLORS.len()]
}

pub fn charts(
    cells: &[Cell],
    systems: &[System],
    m: &Machine,
    rtt_path: &Path,
    tp_path: &Path,
) -> Result<(), String> {
    let machine = format!("{}, {} CPUs, Linux {}, {}", m.cpu, m.cpus, m.kernel, m.date);
    let reps = cells.first().map_or(0, |c| c.samples.len());
    chart(
        rtt_path,
        &format!("Round-trip time by message size ({machine})"),
        &format!("round-trip time (log scale; line: median of {reps} runs, bars: min–max)"),
        cells,
        systems,
        Workload::Rtt,
        &TIME_UNITS,
        SeriesLabelPosition::LowerRight,
    )?;
    chart(
        tp_path,
        &format!("One-way stream throughput by message size ({machine})"),
        &format!("throughput, bytes/s (log scale; line: median of {reps} runs, bars: min–max)"),
        cells,
        systems,
        Workload::Stream,
        &BYTE_RATE_UNITS,
        SeriesLabelPosition::UpperLeft,
    )
}

/// A plotted point: x, then the min, median and max of its samples.
type Point = (f64, f64, f64, f64);

/// A log-log chart of one workload: x = log2(message size), y = the samples (log scale), one
/// line of medians per system with min–max bars, each system's points nudged sideways a little
/// so that the bars do not hide each other.
#[allow(clippy::too_many_arguments)]
fn chart(
    path: &Path,
    title: &str,
    y_desc: &str,
    cells: &[Cell],
    systems: &[System],
    workload: Workload,
    units: &'static [(f64, &'static str)],
    legend: SeriesLabelPosition,
) -> Result<(), String> {
    let e = |e: &dyn std::fmt::Display| format!("{}: {e}", path.display());
    let series: Vec<(System, Vec<Point>)> = systems
        .iter()
        .enumerate()
        .map(|(k, &system)| {
            let nudge = (k as f64 - (systems.len() as f64 - 1.0) / 2.0) * 0.06;
            let points = cells
                .iter()
                .filter(|c| c.system == system && c.workload == workload)
                .filter_map(|c| {
                    let (lo, med, hi) = stats(&c.samples)?;
                    let x = (c.size as f64).log2() + nudge;
                    Some((x, lo, med, hi))
                })
                .collect();
            (system, points)
        })
        .collect();
    let all = series.iter().flat_map(|(_, p)| p.iter());
    let lo = all.clone().map(|p| p.1).fold(f64::INFINITY, f64::min);
    let hi = all.map(|p| p.3).fold(0.0, f64::max);
    if !lo.is_finite() || hi <= 0.0 {
        return Err(format!("{}: nothing to plot", path.display()));
    }
    let (y0, y1) = (lo / 2.0, hi * 3.0);

    let root = SVGBackend::new(path, (1100, 700)).into_drawing_area();
    root.fill(&WHITE).map_err(|x| e(&x))?;
    let root = root.titled(title, ("sans-serif", 20)).map_err(|x| e(&x))?;
    let mut chart = ChartBuilder::on(&root)
        .margin(12)
        .x_label_area_size(50)
        .y_label_area_size(90)
        .build_cartesian_2d(2.5f64..20.5f64, (y0..y1).log_scale())
        .map_err(|x| e(&x))?;
    chart
        .configure_mesh()
        .x_desc("message size (log scale)")
        .y_desc(y_desc)
        .x_labels(18)
        .x_label_formatter(&|x| {
            let k = x.round();
            if (x - k).abs() < 1e-6 && SIZES.contains(&(1usize << (k as u32).min(40))) {
                size_label(1usize << k as u32)
            } else {
                String::new()
            }
        })
        .y_label_formatter(&|y| {
            let (scale, name) = units
                .iter()
                .rev()
                .find(|(s, _)| *y >= *s)
                .unwrap_or(&units[0]);
            format!("{} {name}", sig3(y / scale))
        })
        .light_line_style(RGBColor(238, 238, 238))
        .label_style(("sans-serif", 15))
        .axis_desc_style(("sans-serif", 16))
        .draw()
        .map_err(|x| e(&x))?;
    for (system, points) in &series {
        let c = color(*system);
        let style = c.stroke_width(2);
        chart
            .draw_series(LineSeries::new(points.iter().map(|p| (p.0, p.2)), style))
            .map_err(|x| e(&x))?
            .label(system.name())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 24, y)], c.stroke_width(3)));
        chart
            .draw_series(
                points
                    .iter()
                    .map(|p| ErrorBar::new_vertical(p.0, p.1, p.2, p.3, c.stroke_width(1), 8)),
            )
            .map_err(|x| e(&x))?;
        chart
            .draw_series(
                points
                    .iter()
                    .map(|p| Circle::new((p.0, p.2), 3, c.filled())),
            )
            .map_err(|x| e(&x))?;
    }
    chart
        .configure_series_labels()
        .position(legend)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font(("sans-serif", 15))
        .draw()
        .map_err(|x| e(&x))?;
    root.present().map_err(|x| e(&x))
}
