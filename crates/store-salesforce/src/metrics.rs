//! What the adapter reports to Prometheus (the recorder is the server's):
//! - `crm_backend_calls_total{backend="salesforce",operation,step,status}`: every call to the org, by the
//!   port operation it served and its step, so the call budget per operation can be watched in production;
//! - `crm_backend_api_usage{backend="salesforce",limit,value="used"|"max"}`: each allowance of
//!   `Sforce-Limit-Info` (`api-usage`, and `api-bursts` or `per-app-api-usage` where the org sends them).

use crate::client::Label;

pub(crate) fn call(label: Label, status: &str) {
    metrics::counter!(
        "crm_backend_calls_total",
        "backend" => "salesforce",
        "operation" => label.operation,
        "step" => label.step,
        "status" => status.to_owned()
    )
    .increment(1);
}

/// Parses `api-usage=10018/100000; api-bursts=1/750` (any order, any names, spaces tolerated).
pub(crate) fn parse_limit_info(header: &str) -> Vec<(String, f64, f64)> {
    header
        .split([';', ','])
        .filter_map(|part| {
            let (name, value) = part.split_once('=')?;
            let (used, max) = value.trim().split_once('/')?;
            // `per-app-api-usage=17/250(appName=sample)`: the app's name follows the figure.
            let max = max.split('(').next()?.trim();
            Some((name.trim().to_owned(), used.trim().parse().ok()?, max.parse().ok()?))
        })
        .filter(|(name, ..)| !name.is_empty() && name.len() <= 64)
        .collect()
}

pub(crate) fn limit_info(header: &str) {
    for (name, used, max) in parse_limit_info(header) {
        metrics::gauge!("crm_backend_api_usage", "backend" => "salesforce", "limit" => name.clone(), "value" => "used")
            .set(used);
        metrics::gauge!("crm_backend_api_usage", "backend" => "salesforce", "limit" => name, "value" => "max").set(max);
    }
}

#[cfg(test)]
mod tests {
    use super::parse_limit_info;

    #[test]
    fn limit_info_is_read_tolerantly() {
        assert_eq!(parse_limit_info("api-usage=10018/100000"), vec![("api-usage".into(), 10018.0, 100000.0)]);
        assert_eq!(
            parse_limit_info("api-usage=5/15000; api-bursts=1/750"),
            vec![("api-usage".into(), 5.0, 15000.0), ("api-bursts".into(), 1.0, 750.0)]
        );
        assert_eq!(
            parse_limit_info("per-app-api-usage=17/250(appName=sample)"),
            vec![("per-app-api-usage".into(), 17.0, 250.0)]
        );
        assert!(parse_limit_info("garbage").is_empty());
        assert!(parse_limit_info(" =1/2").is_empty(), "a figure without a name");
        assert!(parse_limit_info(&format!("{}=1/2", "x".repeat(65))).is_empty(), "a name too long for a label");
        assert!(parse_limit_info("api-usage=x/1").is_empty());
    }
}
