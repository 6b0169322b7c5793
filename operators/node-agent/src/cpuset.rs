//! A set of CPU ids in the Linux list format of `cpuset.cpus` ("0-3,8,10-11").

use std::{collections::BTreeSet, fmt, str::FromStr};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// CPU ids, kept sorted. Displays and parses as the kernel's list format.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CpuSet(BTreeSet<u32>);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid cpu list {input:?}: {reason} (expected e.g. \"0-3,8\")")]
pub struct CpuSetParseError {
    pub input: String,
    pub reason: String,
}

impl CpuSet {
    pub fn new() -> Self {
        Self::default()
    }
    pub fn len(&self) -> usize {
        self.0.len()
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
    pub fn contains(&self, cpu: u32) -> bool {
        self.0.contains(&cpu)
    }
    pub fn insert(&mut self, cpu: u32) -> bool {
        self.0.insert(cpu)
    }
    pub fn remove(&mut self, cpu: u32) -> bool {
        self.0.remove(&cpu)
    }
    pub fn iter(&self) -> impl DoubleEndedIterator<Item = u32> + '_ {
        self.0.iter().copied()
    }
    pub fn union(&self, other: &CpuSet) -> CpuSet {
        CpuSet(self.0.union(&other.0).copied().collect())
    }
    pub fn difference(&self, other: &CpuSet) -> CpuSet {
        CpuSet(self.0.difference(&other.0).copied().collect())
    }
    pub fn intersection(&self, other: &CpuSet) -> CpuSet {
        CpuSet(self.0.intersection(&other.0).copied().collect())
    }
    pub fn is_subset(&self, other: &CpuSet) -> bool {
        self.0.is_subset(&other.0)
    }
    /// CPUs `0..n`.
    pub fn first_n(n: u32) -> CpuSet {
        (0..n).collect()
    }
}

impl FromIterator<u32> for CpuSet {
    fn from_iter<I: IntoIterator<Item = u32>>(iter: I) -> Self {
        CpuSet(iter.into_iter().collect())
    }
}

impl fmt::Display for CpuSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        let mut it = self.0.iter().copied().peekable();
        while let Some(start) = it.next() {
            let mut end = start;
            while it.peek() == Some(&(end + 1)) {
                end = it.next().unwrap_or(end);
            }
            if !first {
                f.write_str(",")?;
            }
            first = false;
            if start == end { write!(f, "{start}")? } else { write!(f, "{start}-{end}")? }
        }
        Ok(())
    }
}

impl FromStr for CpuSet {
    type Err = CpuSetParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = |reason: String| CpuSetParseError { input: s.to_string(), reason };
        let mut set = CpuSet::new();
        let trimmed = s.trim();
        if trimmed.is_empty() {
            return Ok(set);
        }
        for part in trimmed.split(',') {
            let cpu = |x: &str| x.trim().parse::<u32>().map_err(|e| err(format!("{x:?}: {e}")));
            match part.split_once('-') {
                Some((a, b)) => {
                    let (a, b) = (cpu(a)?, cpu(b)?);
                    if a > b {
                        return Err(err(format!("range {a}-{b} is backwards")));
                    }
                    set.0.extend(a..=b);
                }
                None => {
                    set.insert(cpu(part)?);
                }
            }
        }
        Ok(set)
    }
}

impl Serialize for CpuSet {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for CpuSet {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_the_kernel_list_format() {
        for (raw, canon) in
            [("", ""), ("0", "0"), ("0-3", "0-3"), ("0,1,2,5", "0-2,5"), (" 8-9,1 \n", "1,8-9"), ("3,2,1", "1-3")]
        {
            let set: CpuSet = raw.parse().unwrap();
            assert_eq!(set.to_string(), canon, "{raw:?}");
            assert_eq!(canon.parse::<CpuSet>().unwrap(), set);
        }
        assert_eq!("0-3,8".parse::<CpuSet>().unwrap().len(), 5);
    }

    #[test]
    fn rejects_bad_lists_with_the_input() {
        for raw in ["a", "3-1", "1,,2", "-1", "1-"] {
            let err = raw.parse::<CpuSet>().unwrap_err().to_string();
            assert!(err.contains(&format!("{raw:?}")), "{err}");
        }
    }
}
