//! Platforms and the matcher that picks an index entry (containerd's `platforms` rules),
//! used by server-side pulls (`pull.rs`) and by the CRI's image resolution alike.
//!
//! ```text
//! normalize   x86_64 / x86-64 → amd64 (variant v1 → none); aarch64 → arm64 (variant 8 / v8
//!             → none: an arm64 entry without variant is v8); armhf → arm/v7; armel → arm/v6;
//!             i386 → 386; os lower-cased
//! host        linux/<arch>; amd64's variant from the CPU (v2: sse4.2+popcnt, v3: avx2+bmi2
//!             +fma, v4: avx512f/bw/cd/dq/vl); arm64 v8
//! accepts     the same os and architecture, and a variant the host runs:
//!             amd64/vN accepts vN, vN-1, …, v1 (preferred in that order);
//!             arm/vN accepts vN down to v5; others need the same variant.
//!             An index entry without a platform is accepted, after every matching one.
//! config      `platforms = ["linux/amd64", "linux/arm64"]`: the first listed platform the
//!             index has wins (each with its fallbacks); empty = the host's. A pull takes
//!             one platform (the best); the list orders preference, it does not pull several.
//! ```
//! 32-bit arm entries are not accepted on an arm64 host (containerd does that when the CPU
//! runs aarch32; taskd does not probe it).

use std::fmt;

use serde::Deserialize;

/// A platform (`os/architecture[/variant]`), normalized.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
pub struct Platform {
    #[serde(default)]
    pub os: String,
    #[serde(default)]
    pub architecture: String,
    #[serde(default)]
    pub variant: String,
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if !self.variant.is_empty() {
            write!(f, "/{}", self.variant)?;
        }
        Ok(())
    }
}

/// A platform string that does not parse.
#[derive(Debug, thiserror::Error)]
#[error("platform {value:?}: {reason}")]
pub struct PlatformError {
    pub value: String,
    pub reason: &'static str,
}

impl crate::errdefs::ErrorKind for PlatformError {
    fn kind(&self) -> crate::errdefs::Kind {
        crate::errdefs::Kind::InvalidArgument
    }
}

impl Platform {
    pub fn new(os: &str, architecture: &str, variant: &str) -> Platform {
        Platform {
            os: os.to_owned(),
            architecture: architecture.to_owned(),
            variant: variant.to_owned(),
        }
        .normalized()
    }

    /// `os/arch[/variant]`.
    pub fn parse(s: &str) -> Result<Platform, PlatformError> {
        let err = |reason| PlatformError {
            value: s.to_owned(),
            reason,
        };
        let parts: Vec<&str> = s.split('/').collect();
        if parts.iter().any(|p| p.is_empty()) {
            return Err(err("empty component"));
        }
        match parts.as_slice() {
            [os, arch] => Ok(Platform::new(os, arch, "")),
            [os, arch, variant] => Ok(Platform::new(os, arch, variant)),
            _ => Err(err("expected os/architecture[/variant]")),
        }
    }

    /// containerd's normalization (see the module docs).
    pub fn normalized(mut self) -> Platform {
        self.os = self.os.to_ascii_lowercase();
        let v = self.variant.to_ascii_lowercase();
        let (arch, variant) = match self.architecture.to_ascii_lowercase().as_str() {
            "i386" => ("386".to_owned(), String::new()),
            "x86_64" | "x86-64" | "amd64" => ("amd64".to_owned(), if v == "v1" { String::new() } else { v }),
            "aarch64" | "arm64" => (
                "arm64".to_owned(),
                match v.as_str() {
                    "8" | "v8" | "v8.0" => String::new(),
                    "9" | "9.0" | "v9.0" => "v9".to_owned(),
                    _ => v,
                },
            ),
            "armhf" => ("arm".to_owned(), "v7".to_owned()),
            "armel" => ("arm".to_owned(), "v6".to_owned()),
            "arm" => (
                "arm".to_owned(),
                match v.as_str() {
                    "" | "7" => "v7".to_owned(),
                    "5" | "6" | "8" => format!("v{v}"),
                    _ => v,
                },
            ),
            other => (other.to_owned(), v),
        };
        self.architecture = arch;
        self.variant = variant;
        self
    }

    /// The platform taskd runs on.
    pub fn host() -> Platform {
        let arch = match std::env::consts::ARCH {
            "x86_64" => "amd64",
            "aarch64" => "arm64",
            "x86" => "386",
            "arm" => "arm",
            "powerpc64" => "ppc64le",
            "s390x" => "s390x",
            "riscv64" => "riscv64",
            other => other,
        };
        Platform::new(std::env::consts::OS, arch, &host_variant())
    }
}

#[cfg(target_arch = "x86_64")]
fn host_variant() -> String {
    use std::arch::is_x86_feature_detected as has;
    let v2 = has!("sse4.2") && has!("popcnt") && has!("ssse3");
    let v3 = v2 && has!("avx2") && has!("bmi1") && has!("bmi2") && has!("fma") && has!("lzcnt");
    let v4 =
        v3 && has!("avx512f") && has!("avx512bw") && has!("avx512cd") && has!("avx512dq") && has!("avx512vl");
    match (v2, v3, v4) {
        (_, _, true) => "v4",
        (_, true, _) => "v3",
        (true, _, _) => "v2",
        _ => "",
    }
    .to_owned()
}

#[cfg(not(target_arch = "x86_64"))]
fn host_variant() -> String {
    String::new()
}

/// A platform as the config writes it (`"linux/arm64/v8"`), checked when the config is read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlatformSpec(pub Platform);

impl std::str::FromStr for PlatformSpec {
    type Err = PlatformError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Platform::parse(s).map(PlatformSpec)
    }
}

impl serde::Serialize for PlatformSpec {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0.to_string())
    }
}

impl<'de> Deserialize<'de> for PlatformSpec {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Which platforms a pull accepts, in order of preference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Matcher {
    /// What was asked (for error messages).
    wanted: Vec<Platform>,
    /// Every accepted platform, most preferred first.
    accepted: Vec<Platform>,
}

/// The platforms `p` runs, best first.
fn expand(p: &Platform) -> Vec<Platform> {
    let with = |v: String| Platform {
        variant: v,
        ..p.clone()
    };
    let level = |v: &str| v.strip_prefix('v').and_then(|n| n.parse::<u32>().ok());
    match (p.architecture.as_str(), level(&p.variant)) {
        ("amd64", Some(n)) if n >= 2 => (2..=n)
            .rev()
            .map(|i| with(format!("v{i}")))
            .chain([with(String::new())])
            .collect(),
        ("arm", Some(n)) if (5..=8).contains(&n) => (5..=n).rev().map(|i| with(format!("v{i}"))).collect(),
        _ => vec![p.clone()],
    }
}

impl Matcher {
    /// Accepts `wanted` (each with what it runs), in that order.
    pub fn new(wanted: Vec<Platform>) -> Matcher {
        let mut accepted: Vec<Platform> = Vec::new();
        for w in &wanted {
            for p in expand(w) {
                if !accepted.contains(&p) {
                    accepted.push(p);
                }
            }
        }
        Matcher { wanted, accepted }
    }

    /// The host's platform.
    pub fn host() -> Matcher {
        Matcher::new(vec![Platform::host()])
    }

    /// From the `platforms` config key; empty = the host's.
    pub fn from_config(platforms: &[PlatformSpec]) -> Matcher {
        if platforms.is_empty() {
            return Matcher::host();
        }
        Matcher::new(platforms.iter().map(|p| p.0.clone()).collect())
    }

    /// The preference of `p` (lower is better); None when not accepted. No platform is
    /// accepted after every match.
    pub fn rank(&self, p: Option<&Platform>) -> Option<usize> {
        match p {
            None => Some(self.accepted.len()),
            Some(p) => {
                let p = p.clone().normalized();
                self.accepted.iter().position(|a| *a == p)
            }
        }
    }

    /// The index of the best accepted item (the first of equals).
    pub fn best<'a>(&self, platforms: impl IntoIterator<Item = Option<&'a Platform>>) -> Option<usize> {
        platforms
            .into_iter()
            .enumerate()
            .filter_map(|(i, p)| self.rank(p).map(|r| (r, i)))
            .min()
            .map(|(_, i)| i)
    }

    /// What was asked, for messages: `linux/amd64/v3, linux/arm64`.
    pub fn describe(&self) -> String {
        self.wanted
            .iter()
            .map(std::string::ToString::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Platform {
        Platform::parse(s).unwrap()
    }

    #[test]
    fn normalization_and_parse() {
        assert_eq!(p("linux/x86_64"), Platform::new("linux", "amd64", ""));
        assert_eq!(p("linux/amd64/v1"), p("linux/amd64"));
        assert_eq!(p("linux/aarch64/v8"), p("linux/arm64"));
        assert_eq!(p("linux/armhf").to_string(), "linux/arm/v7");
        assert_eq!(p("linux/arm").variant, "v7");
        assert!(Platform::parse("linux").is_err());
        assert!(Platform::parse("linux//x").is_err());
        assert_eq!(Platform::host().os, "linux");
    }

    #[test]
    fn amd64_falls_back_through_lower_variants() {
        let m = Matcher::new(vec![p("linux/amd64/v3")]);
        let entries = [
            p("linux/arm64"),
            p("linux/amd64"),
            p("linux/amd64/v2"),
            p("linux/amd64/v4"),
        ];
        assert_eq!(m.best(entries.iter().map(Some)), Some(2));
        assert_eq!(m.best([Some(&entries[0]), Some(&entries[1])]), Some(1));
        assert_eq!(m.best([Some(&entries[0]), Some(&entries[3])]), None);
        // An entry without platform is taken only when nothing matches.
        assert_eq!(m.best([None, Some(&entries[1])]), Some(1));
        assert_eq!(m.best([None, Some(&entries[0])]), Some(0));
    }

    #[test]
    fn arm64_is_v8_and_the_config_order_wins() {
        let m = Matcher::from_config(&["linux/arm64".parse().unwrap()]);
        assert_eq!(m.rank(Some(&Platform::new("linux", "arm64", "v8"))), Some(0));
        assert_eq!(m.rank(Some(&Platform::new("linux", "arm64", "v9"))), None);
        let m = Matcher::from_config(&["linux/arm/v7".parse().unwrap(), "linux/amd64".parse().unwrap()]);
        let e = [p("linux/amd64"), p("linux/arm/v6"), p("linux/arm/v7")];
        assert_eq!(m.best(e.iter().map(Some)), Some(2));
        assert_eq!(m.best([Some(&e[0]), Some(&e[1])]), Some(1));
        assert_eq!(m.describe(), "linux/arm/v7, linux/amd64");
    }

    /// The host's architecture in OCI's words: an arm64 node pulls linux/arm64 (v8, which
    /// normalizes to no variant), an x86_64 node linux/amd64 with its CPU's level.
    #[test]
    fn the_host_is_named_as_oci_names_it() {
        let host = Platform::host();
        let expected = match std::env::consts::ARCH {
            "x86_64" => "amd64",
            "aarch64" => "arm64",
            other => other,
        };
        assert_eq!(host.architecture, expected);
        if cfg!(target_arch = "aarch64") {
            assert_eq!(host.to_string(), "linux/arm64");
        }
        let m = Matcher::host();
        assert_eq!(m.rank(Some(&host)), Some(0));
        // Every host runs its architecture's base variant (amd64 v1, arm64 v8).
        assert!(
            m.rank(Some(&Platform::new(&host.os, &host.architecture, "")))
                .is_some()
        );
    }
}
