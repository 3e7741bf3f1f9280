//! Which vector instruction set the CPU kernels run: detected at run time (one binary for every
//! x86-64 machine), and capped by `RKD_CPU_ISA` or by tests that force a path.
//!
//! The element-wise kernels ([`super::fused`], [`super::fused_attention`], the NF4 kernel) are
//! compiled three times — plain x86-64, AVX2 and AVX-512 — and pick one per call with [`active`].
//! They do the same arithmetic on every path (Rust never contracts `a * b + c` into an FMA), so
//! results are bit-identical whichever runs. The matrix products go through the `gemm` crate,
//! which dispatches the same way (its AVX-512 kernels are on: feature `x86-v4`) but cannot be
//! forced to a lower path.

use std::sync::atomic::{AtomicU8, Ordering};

/// A vector instruction set the kernels are compiled for, from narrowest to widest.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Isa {
    /// Plain x86-64 (SSE2) or another architecture: what the compiler vectorises by default.
    Baseline,
    /// AVX2 (256-bit vectors).
    Avx2,
    /// AVX-512 F/BW/DQ/VL (512-bit vectors), with AVX2 and FMA (the AVX-512 kernels use both).
    Avx512,
}

impl Isa {
    /// The name used by `RKD_CPU_ISA` and in benchmark tables.
    pub fn name(self) -> &'static str {
        match self {
            Isa::Baseline => "baseline",
            Isa::Avx2 => "avx2",
            Isa::Avx512 => "avx512",
        }
    }

    /// Parses a name given by [`Isa::name`].
    pub fn parse(word: &str) -> Option<Isa> {
        match word.trim().to_ascii_lowercase().as_str() {
            "baseline" | "scalar" | "sse2" => Some(Isa::Baseline),
            "avx2" => Some(Isa::Avx2),
            "avx512" | "avx-512" => Some(Isa::Avx512),
            _ => None,
        }
    }

    fn code(self) -> u8 {
        self as u8 + 1
    }

    fn from_code(c: u8) -> Option<Isa> {
        [Isa::Baseline, Isa::Avx2, Isa::Avx512]
            .get(usize::from(c).checked_sub(1)?)
            .copied()
    }
}

/// The widest instruction set this CPU supports.
pub fn detected() -> Isa {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx512bw")
            && std::arch::is_x86_feature_detected!("avx512dq")
            && std::arch::is_x86_feature_detected!("avx512vl")
            && std::arch::is_x86_feature_detected!("avx2")
            && std::arch::is_x86_feature_detected!("fma")
        {
            return Isa::Avx512;
        }
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
            return Isa::Avx2;
        }
    }
    Isa::Baseline
}

/// The CPU's name as it reports it (`cpuid`'s brand string), or the architecture's where it has
/// none: benchmark tables name the machine each figure was measured on.
pub fn cpu_name() -> String {
    #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
    if let Some(brand) = raw_cpuid::CpuId::new().get_processor_brand_string() {
        let name = brand.as_str().split_whitespace().collect::<Vec<_>>().join(" ");
        if !name.is_empty() {
            return name;
        }
    }
    format!("unknown {} CPU", std::env::consts::ARCH)
}

/// The machine as benchmark tables name it: the CPU, the widest instruction set it has, and the
/// path the kernels take (narrower where `RKD_CPU_ISA` caps it), e.g.
/// `Intel(R) Xeon(R) Processor, avx512 (element-wise kernels avx2)`; `gemm` picks its own path.
pub fn machine() -> String {
    let (has, runs) = (detected(), active());
    match has == runs {
        true => format!("{}, {}", cpu_name(), has.name()),
        false => format!("{}, {} (element-wise kernels {})", cpu_name(), has.name(), runs.name()),
    }
}

/// The machine as JSON: `{"name", "isa", "kernels"}` (see [`machine`]).
pub fn machine_json() -> serde_json::Value {
    serde_json::json!({"name": cpu_name(), "isa": detected().name(), "kernels": active().name()})
}

/// The cap set by [`force`] (0: none).
static FORCED: AtomicU8 = AtomicU8::new(0);
/// The detected path capped by `RKD_CPU_ISA`, computed once (0: not yet).
static CAPPED: AtomicU8 = AtomicU8::new(0);

/// The instruction set the kernels use now: the detected one, capped by `RKD_CPU_ISA`
/// (`baseline`, `avx2`, `avx512`) and by [`force`]. Never wider than the CPU supports.
#[inline]
pub fn active() -> Isa {
    let capped = Isa::from_code(CAPPED.load(Ordering::Relaxed)).unwrap_or_else(|| {
        let mut isa = detected();
        if let Some(cap) = std::env::var("RKD_CPU_ISA").ok().and_then(|w| Isa::parse(&w)) {
            isa = isa.min(cap);
        }
        CAPPED.store(isa.code(), Ordering::Relaxed);
        isa
    });
    // Read on every call (no cached result a concurrent `force` could leave stale).
    match Isa::from_code(FORCED.load(Ordering::Acquire)) {
        Some(cap) => capped.min(cap),
        None => capped,
    }
}

/// Caps the kernels at `isa` for the whole process until the guard drops (tests and benchmarks
/// that compare the paths). Returns `None` when the CPU lacks `isa`. Callers that force paths
/// must not overlap (tests hold [`FORCE_LOCK`]); other threads meanwhile get the same results on
/// either path.
pub fn force(isa: Isa) -> Option<Forced> {
    if isa > detected() {
        return None;
    }
    let before = FORCED.swap(isa.code(), Ordering::AcqRel);
    Some(Forced { before })
}

/// Serialises the tests that [`force`] a path.
pub static FORCE_LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Test support: runs `f` with the kernels forced to each path this CPU has, widest last (holding
/// [`FORCE_LOCK`]); a path the CPU lacks is skipped with a message.
#[cfg(test)]
pub(crate) fn on_every_path(mut f: impl FnMut(Isa)) {
    let _lock = FORCE_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    for path in [Isa::Baseline, Isa::Avx2, Isa::Avx512] {
        let Some(_forced) = force(path) else {
            crate::say!("this CPU lacks {}: that path is not tested here", path.name());
            continue;
        };
        assert_eq!(active(), path);
        f(path);
    }
}

/// Restores the previous cap when dropped (see [`force`]).
#[derive(Debug)]
pub struct Forced {
    before: u8,
}

impl Drop for Forced {
    fn drop(&mut self) {
        FORCED.store(self.before, Ordering::Release);
    }
}

/// Runs `$body` compiled for the widest instruction set [`active`] allows: AVX-512, AVX2 or plain
/// x86-64 (same arithmetic on each: the results are bit-identical).
macro_rules! dispatch {
    ($vis:vis $name:ident, ($($arg:ident: $ty:ty),*), $body:expr) => {
        #[inline(always)]
        #[allow(clippy::too_many_arguments)]
        $vis fn $name($($arg: $ty),*) {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx2,fma")]
                #[allow(clippy::too_many_arguments)]
                unsafe fn wide512($($arg: $ty),*) {
                    $body
                }
                #[target_feature(enable = "avx2,fma")]
                #[allow(clippy::too_many_arguments)]
                unsafe fn wide256($($arg: $ty),*) {
                    $body
                }
                match $crate::ml::kernels::isa::active() {
                    // SAFETY: `active` never names an instruction set the CPU lacks.
                    $crate::ml::kernels::isa::Isa::Avx512 => return unsafe { wide512($($arg),*) },
                    // SAFETY: as above.
                    $crate::ml::kernels::isa::Isa::Avx2 => return unsafe { wide256($($arg),*) },
                    $crate::ml::kernels::isa::Isa::Baseline => {}
                }
            }
            $body
        }
    };
}
pub(crate) use dispatch;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_machine_is_named_with_the_path_the_kernels_take() {
        let name = cpu_name();
        assert!(!name.trim().is_empty() && !name.contains("  "), "{name:?}");
        let _lock = FORCE_LOCK.lock().unwrap_or_else(|e| e.into_inner());
        let _forced = force(Isa::Baseline).expect("every CPU has the baseline");
        let machine = machine();
        assert!(machine.starts_with(&name), "{machine}");
        if detected() > Isa::Baseline {
            assert!(
                machine.ends_with(&format!("{} (element-wise kernels baseline)", detected().name())),
                "{machine}"
            );
        }
        assert_eq!(machine_json()["kernels"], "baseline");
    }

    #[test]
    fn names_round_trip_and_forcing_caps_and_restores() {
        for isa in [Isa::Baseline, Isa::Avx2, Isa::Avx512] {
            assert_eq!(Isa::parse(isa.name()), Some(isa));
        }
        assert_eq!(Isa::parse("neon"), None);
        let _lock = FORCE_LOCK.lock().unwrap_or_else(|e| e.into_inner());
        let before = active();
        {
            let _f = force(Isa::Baseline).expect("every CPU runs the baseline");
            assert_eq!(active(), Isa::Baseline);
        }
        assert_eq!(active(), before);
        if detected() < Isa::Avx512 {
            assert!(force(Isa::Avx512).is_none(), "a path the CPU lacks is refused");
        }
    }
}
