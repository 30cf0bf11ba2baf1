//! Reading `/metrics`. The recorder is process-wide, shared by every test
//! app of the suite, so a test proves what its own traffic moved by
//! difference: one scrape before, one after, and a growth at least what
//! the test caused (other tests only ever add to a counter), on a series
//! whose labels its traffic produces where it can.

use super::app::TestApp;

/// One sample: a series name, its labels and its value.
struct Sample {
    name: String,
    labels: Vec<(String, String)>,
    value: f64,
}

/// One scrape of `/metrics`.
pub struct Metrics {
    samples: Vec<Sample>,
}

impl TestApp {
    /// Scrapes `/metrics` (asserting a 200).
    pub async fn metrics(&self) -> Metrics {
        let resp = self.get("/metrics").send().await.unwrap();
        assert_eq!(resp.status(), reqwest::StatusCode::OK);
        Metrics::parse(&resp.text().await.unwrap())
    }
}

impl Metrics {
    /// The samples of a Prometheus text exposition.
    pub fn parse(text: &str) -> Metrics {
        Metrics {
            samples: text.lines().filter_map(sample).collect(),
        }
    }

    /// The sum of the samples of `name` whose labels include `labels`
    /// (0 when there is none).
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.samples
            .iter()
            .filter(|s| s.name == name)
            .filter(|s| {
                labels
                    .iter()
                    .all(|(k, v)| s.labels.iter().any(|(sk, sv)| sk == k && sv == v))
            })
            .map(|s| s.value)
            .sum()
    }

    /// How much `name` with `labels` grew since `before`.
    pub fn grew(&self, before: &Metrics, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.value(name, labels) - before.value(name, labels)
    }
}

/// One line of the exposition as a sample; `None` for comments and blanks.
fn sample(line: &str) -> Option<Sample> {
    if line.starts_with('#') || line.trim().is_empty() {
        return None;
    }
    let (series, value) = line.rsplit_once(' ')?;
    let value = value.parse().ok()?;
    let Some((name, rest)) = series.split_once('{') else {
        return Some(Sample {
            name: series.to_owned(),
            labels: Vec::new(),
            value,
        });
    };
    let mut labels = Vec::new();
    let mut chars = rest.chars();
    loop {
        let key: String = chars.by_ref().take_while(|c| *c != '=').collect();
        let key = key.trim_start_matches([',', ' ']);
        if key.is_empty() || key.starts_with('}') {
            break;
        }
        if chars.next() != Some('"') {
            return None;
        }
        let mut value = String::new();
        while let Some(c) = chars.next() {
            match c {
                '\\' => match chars.next()? {
                    'n' => value.push('\n'),
                    other => value.push(other),
                },
                '"' => break,
                c => value.push(c),
            }
        }
        labels.push((key.to_owned(), value));
    }
    Some(Sample {
        name: name.to_owned(),
        labels,
        value,
    })
}
