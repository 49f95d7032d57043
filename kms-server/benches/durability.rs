//! Durable-write and unseal latency, against a raw `write` + `fdatasync` baseline measured in
//! the same run, in the same directory.
//!
//! Run: `cargo bench -p kms-server --bench durability`
//!
//! Environment:
//! - `KMS_BENCH_DIR`: where the temporary directory is created (default: the system temp dir).
//!   Put it on the disk you want to measure.
//! - `KMS_BENCH_ITERS`: measured sequential iterations per case (default 1000, after a tenth of
//!   that as warm-up).
//!
//! What is measured:
//! 1. Sequential durable puts on `SledBackend` (`Expect::Any`, a new key each time; every put is
//!    insert + sled flush + `fdatasync` of `DIR/db`), for 64-byte and 4-KiB values.
//! 2. Baselines, interleaved round-robin with (1) so all cases see the same disk conditions:
//!    a raw `pwrite` of the same size at offset 0 of a preallocated file + `fdatasync`
//!    ("overwrite": only data, no size change to commit), and a raw `write` appended to a
//!    growing file + `fdatasync` ("append": the new file size must be committed too). Both are
//!    plain blocking calls on the bench thread; the backend's sync goes through tokio's
//!    blocking pool.
//!    Two diagnostic rows use sled directly (no backend, no tokio): insert + `flush()` (sled's
//!    own `sync_file_range`, not durable), and insert + `flush()` + `fdatasync(db)`.
//! 3. 8 concurrent writer tasks on one backend (group commit): ops/s and per-op latency.
//! 4. Unseal: `seal()`, then three `unseal(share)` calls (the third one unseals).

use std::error::Error;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kms_server::Seal;
use kms_server::storage::{Backend, Expect, SledBackend};

type BoxError = Box<dyn Error + Send + Sync>;

const SIZES: [usize; 2] = [64, 4096];
const WRITERS: usize = 8;
const PUTS_PER_WRITER: usize = 250;
const UNSEAL_ROUNDS: usize = 200;
const UNSEAL_WARMUP: usize = 10;

/// Nearest-rank percentile of a sorted sample.
fn pct(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

struct Stats {
    n: usize,
    median: Duration,
    p99: Duration,
}

fn stats(mut v: Vec<Duration>) -> Stats {
    v.sort_unstable();
    Stats {
        n: v.len(),
        median: pct(&v, 50.0),
        p99: pct(&v, 99.0),
    }
}

/// The mount (fs type, source, mount point) holding `dir`, from /proc/self/mounts.
fn filesystem_of(dir: &Path) -> String {
    let dir = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
    let Ok(mounts) = std::fs::read_to_string("/proc/self/mounts") else {
        return "unknown (no /proc/self/mounts)".into();
    };
    let mut best: Option<(usize, String)> = None;
    for line in mounts.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 3 {
            continue;
        }
        let target = f[1].replace("\\040", " ");
        if dir.starts_with(&target) && best.as_ref().is_none_or(|(len, _)| target.len() >= *len) {
            best = Some((target.len(), format!("{} on {} ({})", f[2], target, f[0])));
        }
    }
    best.map(|(_, s)| s).unwrap_or_else(|| "unknown".into())
}

/// Files sled wrote outside its data file (`blobs/`); `fdatasync` of `db` does not cover them.
fn blob_files(dir: &Path) -> usize {
    std::fs::read_dir(dir.join("blobs"))
        .map(|r| r.count())
        .unwrap_or(0)
}

struct Raw {
    overwrite: File,
    append: File,
    buf: Vec<u8>,
}

impl Raw {
    fn open(dir: &Path, size: usize) -> Result<Self, BoxError> {
        let overwrite = OpenOptions::new()
            .create(true)
            .truncate(true)
            .read(true)
            .write(true)
            .open(dir.join(format!("raw-overwrite-{size}")))?;
        // Preallocate and sync once, so each overwrite changes no metadata but mtime.
        overwrite.write_all_at(&vec![0u8; size], 0)?;
        overwrite.sync_all()?;
        let append = OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join(format!("raw-append-{size}")))?;
        append.sync_all()?;
        File::open(dir)?.sync_all()?;
        Ok(Self {
            overwrite,
            append,
            buf: vec![0x5a; size],
        })
    }

    fn overwrite_once(&mut self) -> Result<Duration, BoxError> {
        let t = Instant::now();
        self.overwrite.write_all_at(&self.buf, 0)?;
        self.overwrite.sync_data()?;
        Ok(t.elapsed())
    }

    fn append_once(&mut self) -> Result<Duration, BoxError> {
        let t = Instant::now();
        self.append.write_all(&self.buf)?;
        self.append.sync_data()?;
        Ok(t.elapsed())
    }
}

struct SeqResult {
    size: usize,
    raw_overwrite: Stats,
    raw_append: Stats,
    /// Diagnostic: sled used directly, insert + `flush()` only (not durable).
    sled_flush: Stats,
    /// Diagnostic: sled used directly, insert + `flush()` + `fdatasync(db)` on the bench thread.
    sled_direct: Stats,
    sled: Stats,
    /// Sequential backend throughput: measured puts / sum of their latencies.
    sled_ops_per_s: f64,
    blobs: usize,
}

/// sled 0.34 used directly (no backend, no tokio), for the breakdown rows.
struct DirectSled {
    db: sled::Db,
    data_file: File,
}

impl DirectSled {
    fn open(dir: &Path) -> Result<Self, BoxError> {
        let db = sled::Config::new().path(dir).open()?;
        let data_file = File::open(dir.join("db"))?;
        Ok(Self { db, data_file })
    }

    fn put_once(&self, key: &str, value: &[u8], fdatasync: bool) -> Result<Duration, BoxError> {
        let t = Instant::now();
        self.db.insert(key.as_bytes(), value)?;
        self.db.flush()?;
        if fdatasync {
            self.data_file.sync_data()?;
        }
        Ok(t.elapsed())
    }
}

const CASES: usize = 5;

fn sequential(
    rt: &tokio::runtime::Runtime,
    root: &Path,
    size: usize,
    iters: usize,
) -> Result<SeqResult, BoxError> {
    let dir = root.join(format!("seq-{size}"));
    let backend = SledBackend::open(&dir.join("sled"))?;
    let flush_only = DirectSled::open(&dir.join("sled-flush-only"))?;
    let direct = DirectSled::open(&dir.join("sled-direct"))?;
    let mut raw = Raw::open(&dir, size)?;
    let value = vec![0xa5u8; size];
    let warmup = (iters / 10).max(10);
    let mut samples: [Vec<Duration>; CASES] = Default::default();
    for i in 0..warmup + iters {
        // Round-robin, rotating which goes first, so no case always follows the same one.
        let mut sample = [Duration::ZERO; CASES];
        let key = format!("bench/seq/{i:08}");
        for k in 0..CASES {
            let which = (i + k) % CASES;
            sample[which] = match which {
                0 => raw.overwrite_once()?,
                1 => raw.append_once()?,
                2 => flush_only.put_once(&key, &value, false)?,
                3 => direct.put_once(&key, &value, true)?,
                _ => {
                    let v = value.clone();
                    rt.block_on(async {
                        let t = Instant::now();
                        backend.put(&key, v, Expect::Any).await?;
                        Ok::<_, BoxError>(t.elapsed())
                    })?
                }
            };
        }
        if i >= warmup {
            for (all, s) in samples.iter_mut().zip(sample) {
                all.push(s);
            }
        }
    }
    let [ow, ap, fl, di, sl] = samples;
    let total: Duration = sl.iter().sum();
    let sled_ops_per_s = sl.len() as f64 / total.as_secs_f64();
    let blobs = blob_files(&dir.join("sled"));
    Ok(SeqResult {
        size,
        raw_overwrite: stats(ow),
        raw_append: stats(ap),
        sled_flush: stats(fl),
        sled_direct: stats(di),
        sled: stats(sl),
        sled_ops_per_s,
        blobs,
    })
}

struct ConcResult {
    size: usize,
    latency: Stats,
    ops_per_s: f64,
    blobs: usize,
}

fn concurrent(
    rt: &tokio::runtime::Runtime,
    root: &Path,
    size: usize,
) -> Result<ConcResult, BoxError> {
    let dir = root.join(format!("conc-{size}"));
    let backend = SledBackend::open(&dir)?;
    rt.block_on(async {
        // Warm-up: a few sequential puts so the first segment is allocated.
        for i in 0..20 {
            backend
                .put(&format!("bench/warm/{i}"), vec![1; size], Expect::Any)
                .await?;
        }
        let start = Instant::now();
        let mut tasks = Vec::new();
        for w in 0..WRITERS {
            let b = backend.clone();
            tasks.push(tokio::spawn(async move {
                let mut lat = Vec::with_capacity(PUTS_PER_WRITER);
                for i in 0..PUTS_PER_WRITER {
                    let key = format!("bench/conc/{w}/{i:06}");
                    let t = Instant::now();
                    b.put(&key, vec![0xa5; size], Expect::Any).await?;
                    lat.push(t.elapsed());
                }
                Ok::<_, BoxError>(lat)
            }));
        }
        let mut all = Vec::with_capacity(WRITERS * PUTS_PER_WRITER);
        for t in tasks {
            all.extend(t.await??);
        }
        let wall = start.elapsed();
        Ok(ConcResult {
            size,
            ops_per_s: all.len() as f64 / wall.as_secs_f64(),
            latency: stats(all),
            blobs: blob_files(&dir),
        })
    })
}

struct UnsealResult {
    full: Stats,
    one_share: Stats,
}

fn unseal(rt: &tokio::runtime::Runtime, root: &Path) -> Result<UnsealResult, BoxError> {
    let dir = root.join("seal");
    rt.block_on(async {
        let backend: Arc<dyn Backend> = Arc::new(SledBackend::open(&dir)?);
        let seal = Seal::load(backend).await?;
        let new = seal.init(5, 3).await?;
        let shares = &new.shares;
        let (mut full, mut one) = (Vec::new(), Vec::new());
        for r in 0..UNSEAL_WARMUP + UNSEAL_ROUNDS {
            seal.seal().await?;
            let pick = |k: usize| shares[(r + k) % shares.len()].as_str();
            let t0 = Instant::now();
            seal.unseal(pick(0)).await?;
            let t1 = Instant::now();
            seal.unseal(pick(1)).await?;
            let t2 = Instant::now();
            let status = seal.unseal(pick(2)).await?;
            let t3 = Instant::now();
            if status.sealed {
                return Err("three valid shares did not unseal".into());
            }
            if r >= UNSEAL_WARMUP {
                full.push(t3 - t0);
                one.push(t1 - t0);
                one.push(t2 - t1);
            }
        }
        Ok(UnsealResult {
            full: stats(full),
            one_share: stats(one),
        })
    })
}

fn ratio(a: Duration, b: Duration) -> f64 {
    a.as_secs_f64() / b.as_secs_f64()
}

fn main() -> Result<(), BoxError> {
    // `cargo bench` passes `--bench`; there is nothing to filter.
    let base: PathBuf = std::env::var_os("KMS_BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    let iters: usize = match std::env::var("KMS_BENCH_ITERS") {
        Ok(s) => s.parse()?,
        Err(_) => 1000,
    };
    std::fs::create_dir_all(&base)?;
    let tmp = tempfile::Builder::new()
        .prefix("kms-durability-")
        .tempdir_in(&base)?;
    let root = tmp.path();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;

    println!("# kms-server durability bench\n");
    println!("- dir: `{}`", root.display());
    println!("- filesystem: {}", filesystem_of(root));
    println!(
        "- runtime: tokio multi-thread, {} cores available",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!(
        "- sequential: {iters} measured puts per size after {} warm-up, interleaved round-robin \
         with the raw baselines",
        (iters / 10).max(10)
    );
    println!(
        "- raw overwrite = pwrite at offset 0 of a preallocated file + fdatasync; raw append = \
         write at end of a growing file + fdatasync"
    );
    println!("- percentiles are nearest-rank\n");

    let started = Instant::now();
    let seq: Vec<SeqResult> = SIZES
        .iter()
        .map(|&s| sequential(&rt, root, s, iters))
        .collect::<Result<_, _>>()?;
    let conc: Vec<ConcResult> = SIZES
        .iter()
        .map(|&s| concurrent(&rt, root, s))
        .collect::<Result<_, _>>()?;
    let un = unseal(&rt, root)?;

    println!("## Sequential durable writes (one writer)\n");
    println!(
        "| value | case | n | median µs | p99 µs | median / raw overwrite | median / raw append |"
    );
    println!("|---|---|---|---|---|---|---|");
    for r in &seq {
        for (name, s) in [
            ("raw overwrite + fdatasync", &r.raw_overwrite),
            ("raw append + fdatasync", &r.raw_append),
            (
                "diag: sled insert + flush, no fdatasync (not durable)",
                &r.sled_flush,
            ),
            (
                "diag: sled insert + flush + fdatasync, direct",
                &r.sled_direct,
            ),
            ("SledBackend::put (flush + fdatasync)", &r.sled),
        ] {
            println!(
                "| {} B | {name} | {} | {:.1} | {:.1} | {:.2} | {:.2} |",
                r.size,
                s.n,
                us(s.median),
                us(s.p99),
                ratio(s.median, r.raw_overwrite.median),
                ratio(s.median, r.raw_append.median),
            );
        }
    }

    println!("\n## Concurrent durable writes: {WRITERS} writer tasks x {PUTS_PER_WRITER} puts\n");
    println!(
        "| value | sequential ops/s | concurrent ops/s | throughput x | sequential median µs | \
         concurrent median µs | concurrent p99 µs | latency x |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for (c, s) in conc.iter().zip(&seq) {
        println!(
            "| {} B | {:.0} | {:.0} | {:.2} | {:.1} | {:.1} | {:.1} | {:.2} |",
            c.size,
            s.sled_ops_per_s,
            c.ops_per_s,
            c.ops_per_s / s.sled_ops_per_s,
            us(s.sled.median),
            us(c.latency.median),
            us(c.latency.p99),
            ratio(c.latency.median, s.sled.median),
        );
    }

    println!("\n## Unseal (5 shares, threshold 3), {UNSEAL_ROUNDS} rounds\n");
    println!("| case | n | median µs | p99 µs |");
    println!("|---|---|---|---|");
    println!(
        "| 3 x unseal(share), the 3rd unseals | {} | {:.1} | {:.1} |",
        un.full.n,
        us(un.full.median),
        us(un.full.p99)
    );
    println!(
        "| 1 share that does not complete the unseal | {} | {:.1} | {:.1} |",
        un.one_share.n,
        us(un.one_share.median),
        us(un.one_share.p99)
    );

    let blobs: Vec<String> = seq
        .iter()
        .map(|r| format!("seq {} B: {}", r.size, r.blobs))
        .chain(
            conc.iter()
                .map(|c| format!("conc {} B: {}", c.size, c.blobs)),
        )
        .collect();
    println!(
        "\nsled `blobs/` files (large entries; synced separately by the backend): {}",
        blobs.join(", ")
    );
    println!("measured in {:.1} s", started.elapsed().as_secs_f64());
    Ok(())
}
