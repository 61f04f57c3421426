//! `report`: summarizes CSV text (with a header row): the row count and, per column, how
//! many values are numeric, their sum, min and max, and how many cells are empty. Reports
//! progress every `progress_every` rows.

use std::collections::BTreeMap;

use jobhost_guest::{Handler, Job, JobError, export_handler};
use serde::{Deserialize, Serialize};

/// The job's payload.
#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Report {
    /// CSV text; the first row names the columns.
    #[schemars(length(min = 1))]
    pub csv: String,
    /// Report progress every this many rows (default 1000).
    #[schemars(range(min = 1))]
    pub progress_every: Option<u64>,
}

/// The summary of one column.
#[derive(Serialize, Default)]
pub struct Column {
    /// Cells that parse as numbers.
    pub numeric: u64,
    /// Empty cells.
    pub empty: u64,
    /// Sum of the numeric cells.
    pub sum: f64,
    /// Smallest numeric cell.
    pub min: Option<f64>,
    /// Largest numeric cell.
    pub max: Option<f64>,
}

/// The job's output.
#[derive(Serialize)]
pub struct Summary {
    /// Data rows (the header excluded).
    pub rows: u64,
    /// Per column, by header name.
    pub columns: BTreeMap<String, Column>,
}

fn add_cell(column: &mut Column, cell: &str) {
    let cell = cell.trim();
    if cell.is_empty() {
        column.empty += 1;
    } else if let Ok(value) = cell.parse::<f64>() {
        column.numeric += 1;
        column.sum += value;
        column.min = Some(column.min.map_or(value, |m| m.min(value)));
        column.max = Some(column.max.map_or(value, |m| m.max(value)));
    }
}

struct ReportHandler;

impl Handler for ReportHandler {
    type Payload = Report;
    type Output = Summary;
    const NAMES: &'static [&'static str] = &["report"];

    fn handle(job: Job<Report>) -> Result<Summary, JobError> {
        let mut reader = csv::Reader::from_reader(job.payload.csv.as_bytes());
        let headers: Vec<String> = reader
            .headers()
            .map_err(|e| JobError::permanent(format!("bad CSV header: {e}")))?
            .iter()
            .map(str::to_string)
            .collect();
        let total = job.payload.csv.lines().count().saturating_sub(1) as u64;
        let every = job.payload.progress_every.unwrap_or(1000).max(1);
        let mut columns: BTreeMap<String, Column> = headers.iter().map(|h| (h.clone(), Column::default())).collect();
        let mut rows = 0;
        for record in reader.records() {
            let record = record.map_err(|e| JobError::permanent(format!("bad CSV row {}: {e}", rows + 1)))?;
            for (header, cell) in headers.iter().zip(record.iter()) {
                if let Some(column) = columns.get_mut(header) {
                    add_cell(column, cell);
                }
            }
            rows += 1;
            if rows % every == 0 {
                jobhost_guest::progress(rows, total, Some("rows summarized"));
            }
        }
        jobhost_guest::progress(rows, rows, Some("done"));
        Ok(Summary { rows, columns })
    }
}

export_handler!(ReportHandler);
