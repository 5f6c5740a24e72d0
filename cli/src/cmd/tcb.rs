//! `quarry tcb report`: the coordinator's TCB monitor verdict per running marble
//! (`GET /api/v2/tcb`), as a table or JSON.
use quarry_api::tcb::{TcbEntry, TcbReport};

use crate::client::{Client, ConnectArgs};
use crate::output::{self, Failure};

/// Arguments of `quarry tcb`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// What to ask the TCB monitor.
    #[command(subcommand)]
    pub command: TcbCommand,
}

/// Subcommands of `quarry tcb`.
#[derive(clap::Subcommand, Debug)]
pub enum TcbCommand {
    /// Print each running marble's TCB status (previous → current), advisories, whether its
    /// package still accepts it and the components to raise.
    #[command(
        after_help = "Example:\n  quarry tcb report --root-ca root.pem\n  quarry tcb report --insecure --json | jq '.marbles[] | select(.inPolicy | not)'\n\nThe coordinator re-verifies every running marble's evidence with its current collateral every\n--tcb-recheck-interval and whenever its collateral directory changes; the manifest's\nConfig.TCBChangeAction decides what an out-of-policy marble gets (warn, refuse-renewal, revoke).\nExit code 0 even when marbles are out of policy: read the table or the JSON."
    )]
    Report {
        /// Coordinator address and trust.
        #[command(flatten)]
        connect: ConnectArgs,
        /// Print the report as JSON (the API's `data`).
        #[arg(long)]
        json: bool,
    },
}

/// Runs `quarry tcb`.
pub fn run(args: &Args) -> Result<(), Failure> {
    match &args.command {
        TcbCommand::Report { connect, json } => {
            let client = Client::from_args(connect)?;
            let report: TcbReport =
                client.fetch("api/v2/tcb", "reading the TCB monitor's report")?;
            if report.simulation {
                crate::cmd::status::warn_simulation(client.address());
            }
            if *json {
                return output::json(&report);
            }
            for line in table(&report) {
                output::line(line)?;
            }
            Ok(())
        }
    }
}

fn status_text(s: Option<quarry_api::TcbStatus>) -> &'static str {
    s.map_or("-", |s| s.as_str())
}

/// One line per marble after a header, then the details of those out of policy.
fn table(report: &TcbReport) -> Vec<String> {
    let mut out = vec![format!(
        "action on change: {}; re-checked every {} s",
        report.action, report.recheck_interval_seconds
    )];
    if report.marbles.is_empty() {
        out.push("no running marbles are recorded".into());
        return out;
    }
    let rows: Vec<[String; 7]> = report
        .marbles
        .iter()
        .map(|m| {
            [
                m.marble_type.clone(),
                m.uuid.clone(),
                format!(
                    "{} -> {}",
                    status_text(m.previous_status),
                    status_text(m.status)
                ),
                if m.in_policy { "yes" } else { "NO" }.to_string(),
                if m.advisories.is_empty() {
                    "-".into()
                } else {
                    m.advisories.join(",")
                },
                m.collateral.as_str().to_string(),
                checked(m),
            ]
        })
        .collect();
    let header = [
        "TYPE",
        "UUID",
        "STATUS (previous -> now)",
        "IN POLICY",
        "ADVISORIES",
        "COLLATERAL",
        "CHECKED",
    ];
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in &rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.len());
        }
    }
    let fmt = |cells: Vec<&str>| {
        cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_string()
    };
    out.push(fmt(header.to_vec()));
    for r in &rows {
        out.push(fmt(r.iter().map(String::as_str).collect()));
    }
    for m in &report.marbles {
        for g in &m.to_raise {
            out.push(format!("  {} {}: raise {g}", m.marble_type, m.uuid));
        }
        for f in &m.policy_fields {
            out.push(format!(
                "  {} {}: {}: expected {}, found {}",
                m.marble_type, m.uuid, f.field, f.expected, f.found
            ));
        }
        if let Some(e) = &m.last_error {
            out.push(format!(
                "  {} {}: last re-evaluation failed: {e}",
                m.marble_type, m.uuid
            ));
        }
        if m.simulation {
            out.push(format!(
                "  {} {}: SIMULATION: the status comes from a simulated TEE",
                m.marble_type, m.uuid
            ));
        }
    }
    out
}

fn checked(m: &TcbEntry) -> String {
    time::OffsetDateTime::from_unix_timestamp(i64::try_from(m.checked_at).unwrap_or(0))
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| m.checked_at.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use quarry_api::tcb::CollateralOrigin;

    #[test]
    fn the_table_shows_the_change_and_what_to_raise() {
        let report = TcbReport {
            action: "refuse-renewal".into(),
            recheck_interval_seconds: 3600,
            last_run: Some(1),
            simulation: false,
            marbles: vec![TcbEntry {
                marble_type: "db".into(),
                uuid: "u-1".into(),
                evidence_type: quarry_api::EvidenceType::TdxDcap,
                previous_status: Some(quarry_api::TcbStatus::UpToDate),
                status: Some(quarry_api::TcbStatus::OutOfDate),
                advisories: vec!["INTEL-SA-01192".into()],
                in_policy: false,
                policy_fields: vec![],
                to_raise: vec![quarry_api::claims::ComponentGap {
                    component: "TDX_MODULE_ISVSVN".into(),
                    label: None,
                    found: 6,
                    required: 11,
                }],
                evaluation_data_number: Some(20),
                collateral: CollateralOrigin::Source,
                evidence_at: 0,
                checked_at: 1_792_454_400,
                changed_at: Some(1_792_454_400),
                last_error: None,
                simulation: false,
            }],
        };
        let lines = table(&report);
        assert!(lines[0].contains("refuse-renewal"), "{lines:?}");
        assert!(lines[1].starts_with("TYPE"), "{lines:?}");
        let row = &lines[2];
        for needle in [
            "db",
            "u-1",
            "UpToDate -> OutOfDate",
            "NO",
            "INTEL-SA-01192",
            "source",
            "2026-10-20T00:00:00Z",
        ] {
            assert!(row.contains(needle), "{row} must show {needle}");
        }
        assert_eq!(
            lines[3],
            "  db u-1: raise TDX_MODULE_ISVSVN: found 6, required 11"
        );
    }
}
