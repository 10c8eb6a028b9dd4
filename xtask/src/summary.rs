//! Counting libtest results.

/// Passed/failed counts.
#[derive(Debug, Default, Clone, Copy)]
pub struct Tally {
    pub passed: u64,
    pub failed: u64,
}

impl Tally {
    pub fn add(&mut self, other: &Tally) {
        self.passed += other.passed;
        self.failed += other.failed;
    }

    pub fn line(&self) -> String {
        format!("{} passed, {} failed", self.passed, self.failed)
    }

    /// Sum every `test result: ... N passed; M failed; ...` line of libtest output.
    pub fn parse(output: &str) -> Tally {
        let mut t = Tally::default();
        for line in output.lines().filter(|l| l.trim_start().starts_with("test result:")) {
            t.passed += count(line, "passed");
            t.failed += count(line, "failed");
        }
        t
    }
}

fn count(line: &str, word: &str) -> u64 {
    let words: Vec<&str> = line
        .split(|c: char| c.is_whitespace() || c == ';' || c == '.')
        .filter(|w| !w.is_empty())
        .collect();
    words.windows(2).filter(|w| w[1] == word).filter_map(|w| w[0].parse::<u64>().ok()).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_libtest_summaries() {
        let out = "running 2 tests\ntest a ... ok\ntest result: ok. 2 passed; 0 failed; 1 ignored; 0 measured; 0 filtered out; finished in 0.01s\n\
                   test result: FAILED. 3 passed; 1 failed; 0 ignored; 0 measured; 0 filtered out\n";
        let t = Tally::parse(out);
        assert_eq!((t.passed, t.failed), (5, 1));
        assert_eq!(t.line(), "5 passed, 1 failed");
    }
}
