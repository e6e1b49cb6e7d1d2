//! The per-call profile of figure 1: instructions per unary call (client and server together)
//! for raw tonic, the generated caller against no layers, the worker's full inbound stack, and
//! the full stack with each layer left out in turn, so each layer's cost is the difference.
//!
//! Instructions, not time: on this 2-core machine wall-clock figures move by tens of percent
//! between runs, an instruction count repeats to a fraction of one. There are no hardware
//! counters in this VM, so each variant runs in a process of its own under callgrind
//! (`valgrind` must be installed), twice, with `calls` and `2 * calls` calls: the difference
//! divided by `calls` is the cost of a call, with start-up and warm-up cancelled out; the
//! median of three such pairs is taken. The probe runs tokio on one thread, which callgrind
//! counts alone.

use std::path::Path;

use mesh_runtime::InboundLayerKind;

use crate::unary::Client;

/// One way of serving and calling, as `--probe` names it.
#[derive(Clone, Debug, PartialEq)]
pub enum Variant {
    /// Raw tonic client and server.
    Raw,
    /// The generated caller and the inbound stack without the layers named.
    Mesh(Vec<InboundLayerKind>),
}

impl Variant {
    /// `raw`, `mesh` or `mesh-without:auth,trace`.
    pub fn parse(text: &str) -> anyhow::Result<Self> {
        match text {
            "raw" => Ok(Self::Raw),
            "mesh" => Ok(Self::Mesh(Vec::new())),
            _ => {
                let names = text.strip_prefix("mesh-without:").ok_or_else(|| {
                    anyhow::anyhow!("--probe {text:?}: expected raw, mesh or mesh-without:<layers>")
                })?;
                let off = names
                    .split(',')
                    .map(|name| {
                        InboundLayerKind::from_name(name)
                            .ok_or_else(|| anyhow::anyhow!("--probe: no inbound layer {name:?}"))
                    })
                    .collect::<anyhow::Result<_>>()?;
                Ok(Self::Mesh(off))
            }
        }
    }

    fn arg(&self) -> String {
        match self {
            Self::Raw => "raw".into(),
            Self::Mesh(off) if off.is_empty() => "mesh".into(),
            Self::Mesh(off) => {
                let names: Vec<_> = off.iter().map(|kind| kind.name()).collect();
                format!("mesh-without:{}", names.join(","))
            }
        }
    }
}

/// Run as `mesh-bench --probe VARIANT --calls N` (by [`run`], under callgrind): serves and
/// calls `calls` times in sequence after a warm-up, then exits.
pub async fn probe(variant: &Variant, calls: usize) -> anyhow::Result<()> {
    let tenants = crate::shipped_tenants()?;
    let mut client = match variant {
        Variant::Raw => Client::Raw(
            mesh_api::recommend::v1::recommend_client::RecommendClient::connect(
                crate::unary::serve_raw().await?,
            )
            .await?,
        ),
        Variant::Mesh(off) => {
            let url = crate::unary::serve_mesh_without(&tenants, off).await?;
            let channel = tonic::transport::Endpoint::from_shared(url)?
                .connect()
                .await?;
            Client::Mesh(
                mesh_api::recommend::v1::RecommendCaller::new(channel),
                crate::tenant_ctx(&tenants, "mall")?,
            )
        }
    };
    // the first calls (connecting, first use of everything) can outlast the contract's
    // deadline, which the generated caller always sends, under callgrind's slowdown
    for _ in 0..100 {
        let _ = client.call().await;
    }
    for _ in 0..calls {
        client.call().await?;
    }
    Ok(())
}

/// Instructions the whole process executed running `variant` with `calls` calls.
fn instructions(variant: &Variant, calls: usize, out: &Path) -> anyhow::Result<u64> {
    let status = std::process::Command::new("valgrind")
        // the calls run on the probe's one thread; the exporters' threads are left out
        .args(["--tool=callgrind", "--quiet", "--separate-threads=yes"])
        .arg(format!("--callgrind-out-file={}", out.display()))
        .arg(std::env::current_exe()?)
        .args(["--probe", &variant.arg(), "--calls", &calls.to_string()])
        .status()
        .map_err(|e| anyhow::anyhow!("running valgrind (is it installed?): {e}"))?;
    anyhow::ensure!(
        status.success(),
        "{} under callgrind: {status}",
        variant.arg()
    );
    let main_thread = out.with_file_name(format!(
        "{}-01",
        out.file_name().unwrap_or_default().to_string_lossy()
    ));
    let text = std::fs::read_to_string(&main_thread)?;
    text.lines()
        .find_map(|line| line.strip_prefix("summary: "))
        .or_else(|| text.lines().find_map(|line| line.strip_prefix("totals: ")))
        .and_then(|n| n.split_whitespace().next()?.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("no summary line in {}", main_thread.display()))
}

/// Instructions per call of `variant`: the difference between `2 * calls` and `calls` calls,
/// the median of three such measurements (a count still moves by about 1 % between runs:
/// hash seeds, allocation patterns).
fn per_call(variant: &Variant, calls: usize, dir: &Path) -> anyhow::Result<f64> {
    let mut counts = Vec::new();
    for _ in 0..3 {
        let one = instructions(variant, calls, &dir.join("one.out"))?;
        let two = instructions(variant, 2 * calls, &dir.join("two.out"))?;
        counts.push(two.saturating_sub(one) as f64 / calls as f64);
    }
    counts.sort_by(f64::total_cmp);
    eprintln!("  {}: {counts:.0?}", variant.arg());
    Ok(counts[1])
}

/// The table, in markdown: each variant's instructions per call, and each layer's share.
pub fn run(calls: usize) -> anyhow::Result<String> {
    let dir = tempfile::tempdir()?;
    let raw = per_call(&Variant::Raw, calls, dir.path())?;
    let bare = per_call(
        &Variant::Mesh(InboundLayerKind::ALL.to_vec()),
        calls,
        dir.path(),
    )?;
    let full = per_call(&Variant::Mesh(Vec::new()), calls, dir.path())?;
    let k = |n: f64| format!("{:.1} k", n / 1000.0);
    let mut table = format!(
        "Instructions per unary call, client and server together (callgrind, {calls} calls \
         after a warm-up, start-up cancelled out, median of three):\n\n\
         | variant | instructions per call | / raw tonic | cost of the layer (full stack - without it) |\n\
         |---|---|---|---|\n\
         | raw tonic client and server | {} | 1.00 | - |\n\
         | generated caller, no inbound layer | {} | {:.2} | caller and its headers: {} |\n\
         | generated caller, the worker's full inbound stack | {} | {:.2} | all layers: {} |\n",
        k(raw),
        k(bare),
        bare / raw,
        k(bare - raw),
        k(full),
        full / raw,
        k(full - bare),
    );
    for kind in InboundLayerKind::ALL {
        let without = per_call(&Variant::Mesh(vec![kind]), calls, dir.path())?;
        table.push_str(&format!(
            "| full stack without `{}` | {} | {:.2} | {} ({:.1} % of the full call) |\n",
            kind.name(),
            k(without),
            without / raw,
            k(full - without),
            (full - without) / full * 100.0,
        ));
    }
    Ok(table)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_variant_reads_back_as_it_is_written() {
        for text in ["raw", "mesh", "mesh-without:auth,rate-limit"] {
            assert_eq!(Variant::parse(text).unwrap().arg(), text);
        }
        let err = Variant::parse("mesh-without:tracing").unwrap_err();
        assert_eq!(err.to_string(), "--probe: no inbound layer \"tracing\"");
    }
}
