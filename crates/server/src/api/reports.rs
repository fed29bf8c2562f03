//! The reports (docs/reports.md): their query parameters, parsed at the edge, and their JSON answers.
//!
//! Every parameter is checked and every problem named at once (422 `VALIDATION_FAILED`); a parameter the
//! report does not know, or one given twice, is refused too. Periods are bounded (`store::reports`), so no
//! question reads without limit. The answers carry no personal data.

use std::collections::HashMap;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::Json;
use lifecycle::{Channel, Product};
use serde::{Deserialize, Serialize};
use store::reports::{GroupBy, Period, StaleCursor, StaleQuery};
use time::format_description::well_known::Rfc3339;
use time::macros::format_description;
use time::{Date, Duration, OffsetDateTime, Time};
use utoipa::openapi::schema::{KnownFormat, ObjectBuilder, OneOfBuilder, Schema, SchemaFormat, Type};
use utoipa::{IntoParams, ToSchema};

use super::dto::schema;
use super::error::{ApiError, FieldError, Problem};
use super::AppState;

/// The period's default length when `from` is not given.
const DEFAULT_DAYS: i64 = 30;

fn rfc3339(t: OffsetDateTime) -> String {
    t.to_offset(time::UtcOffset::UTC).format(&Rfc3339).unwrap_or_default()
}

/// A query string as name-value pairs, in order.
type Pairs = Result<Query<Vec<(String, String)>>, QueryRejection>;

/// The query's pairs, each name at most once, only the names `known`.
fn pairs(query: Pairs, known: &[&str]) -> Result<HashMap<String, String>, ApiError> {
    let Ok(Query(list)) = query else {
        return Err(ApiError::BadPath("the query string cannot be read".into()));
    };
    let mut map = HashMap::new();
    let mut errors = Vec::new();
    for (name, value) in list {
        if !known.contains(&name.as_str()) {
            errors.push(FieldError::new(
                clip(&name),
                format!("is not a parameter of this report ({})", known.join(", ")),
            ));
        } else if map.insert(name.clone(), value).is_some() {
            errors.push(FieldError::new(name, "is given more than once"));
        }
    }
    if errors.is_empty() {
        Ok(map)
    } else {
        Err(ApiError::Validation(errors))
    }
}

/// A parameter name as it may be echoed back: short, printable.
fn clip(name: &str) -> String {
    name.chars().filter(|c| c.is_ascii_graphic()).take(40).collect()
}

/// `YYYY-MM-DD` (midnight UTC; as `to`, the whole day is included) or an RFC 3339 date-time. The end of
/// the last representable day stands for the start of the next.
fn instant(value: &str, end_of_day: bool) -> Option<OffsetDateTime> {
    if let Ok(t) = OffsetDateTime::parse(value, &Rfc3339) {
        return Some(t);
    }
    let day = Date::parse(value, format_description!("[year]-[month]-[day]")).ok()?;
    let start = day.with_time(Time::MIDNIGHT).assume_utc();
    Some(match (end_of_day, day.next_day()) {
        (false, _) => start,
        (true, Some(next)) => next.with_time(Time::MIDNIGHT).assume_utc(),
        (true, None) => day.with_time(Time::MAX).assume_utc(),
    })
}

/// Collects the errors of every parameter before answering.
#[derive(Default)]
struct Check {
    errors: Vec<FieldError>,
}

impl Check {
    fn fail(&mut self, field: &str, message: impl Into<String>) {
        self.errors.push(FieldError::new(field, message));
    }

    fn channel(&mut self, q: &HashMap<String, String>) -> Option<Channel> {
        let v = q.get("channel")?;
        Channel::parse(v).map_err(|e| self.fail("channel", e.to_string())).ok()
    }

    fn product(&mut self, q: &HashMap<String, String>) -> Option<Product> {
        let v = q.get("product")?;
        Product::parse(v).map_err(|e| self.fail("product", e.to_string())).ok()
    }

    fn period(&mut self, q: &HashMap<String, String>) -> Option<Period> {
        let (channel, product) = (self.channel(q), self.product(q));
        const FORMAT: &str = "must be a date (YYYY-MM-DD) or an RFC 3339 date-time";
        let to = match q.get("to") {
            None => Some(OffsetDateTime::now_utc()),
            Some(v) => instant(v, true).or_else(|| {
                self.fail("to", FORMAT);
                None
            }),
        };
        let from = match (q.get("from"), to) {
            (None, Some(to)) => Some(to.saturating_sub(Duration::days(DEFAULT_DAYS))),
            (None, None) => None,
            (Some(v), _) => instant(v, false).or_else(|| {
                self.fail("from", FORMAT);
                None
            }),
        };
        Some(Period::new(from?, to?).with_filters(channel, product))
    }

    fn number(&mut self, q: &HashMap<String, String>, name: &str, default: u32, max: u32) -> u32 {
        match q.get(name) {
            None => default,
            Some(v) => match v.parse::<u32>() {
                Ok(n) if (1..=max).contains(&n) => n,
                _ => {
                    self.fail(name, format!("must be a whole number from 1 to {max}"));
                    default
                }
            },
        }
    }

    fn done<T>(self, value: Option<T>) -> Result<T, ApiError> {
        match value {
            Some(v) if self.errors.is_empty() => Ok(v),
            _ if self.errors.is_empty() => Err(ApiError::Internal),
            _ => Err(ApiError::Validation(self.errors)),
        }
    }
}

/// What the funnel's groups are.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum GroupByDto {
    Channel,
    Product,
    Owner,
    Day,
}

impl From<GroupByDto> for GroupBy {
    fn from(g: GroupByDto) -> Self {
        match g {
            GroupByDto::Channel => Self::Channel,
            GroupByDto::Product => Self::Product,
            GroupByDto::Owner => Self::Owner,
            GroupByDto::Day => Self::Day,
        }
    }
}

/// A `from` or `to`: a date or an RFC 3339 date-time, as [`instant`] reads them.
fn date_or_instant() -> Schema {
    let one = |format| ObjectBuilder::new().schema_type(Type::String).format(Some(SchemaFormat::KnownFormat(format)));
    OneOfBuilder::new()
        .description(Some("`YYYY-MM-DD` or an RFC 3339 date-time"))
        .item(one(KnownFormat::Date))
        .item(one(KnownFormat::DateTime))
        .build()
        .into()
}

/// A `cursor`: what [`StaleCursor::parse`] accepts.
fn cursor() -> Schema {
    ObjectBuilder::new().schema_type(Type::String).pattern(Some(StaleCursor::PATTERN)).build().into()
}

/// The period and filters every report but `stale` takes. Any two dates make a period: a `to` not after
/// `from` is an empty period, and a span over 366 days keeps its last 366 (the answer's `from` says so).
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)] // documents the parameters; they are parsed by hand to name every bad one
pub struct PeriodParams {
    /// Start, inclusive: `YYYY-MM-DD` (midnight UTC) or an RFC 3339 date-time. Default: 30 days before `to`;
    /// at most 366 days before `to` (an earlier start is moved up).
    #[param(schema_with = date_or_instant, example = "2026-11-01")]
    from: Option<String>,
    /// End: `YYYY-MM-DD` (that whole day included) or an RFC 3339 date-time (excluded). Default: now. Not
    /// after `from`: the period is empty.
    #[param(schema_with = date_or_instant, example = "2026-11-30")]
    to: Option<String>,
    /// Only records of this channel.
    #[param(value_type = Option<schema::Channel>)]
    channel: Option<String>,
    /// Only records of this product.
    #[param(value_type = Option<schema::Product>)]
    product: Option<String>,
}

/// The funnel's grouping.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub struct GroupParams {
    /// What the groups are; default `channel`.
    #[serde(rename = "groupBy")]
    #[param(rename = "groupBy", inline)]
    group_by: Option<GroupByDto>,
}

/// The stale list's parameters.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub struct StaleParams {
    /// Open records created more than this many days ago (1-3650); default 30.
    #[serde(rename = "olderThanDays")]
    #[param(rename = "olderThanDays", minimum = 1, maximum = 3650)]
    older_than_days: Option<u32>,
    /// Records per page (1-500); default 100.
    #[param(minimum = 1, maximum = 500)]
    limit: Option<u32>,
    /// `nextCursor` of the previous page.
    #[param(schema_with = cursor)]
    cursor: Option<String>,
    /// Only records of this channel.
    #[param(value_type = Option<schema::Channel>)]
    channel: Option<String>,
    /// Only records of this product.
    #[param(value_type = Option<schema::Product>)]
    product: Option<String>,
}

/// One group of the funnel.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct FunnelGroup {
    /// The channel, product, owner code or day (`YYYY-MM-DD`, UTC).
    pub group: String,
    /// Leads created in the period.
    pub leads: u64,
    /// Opportunities created in the period by a create (not by converting a lead).
    pub opportunities: u64,
    /// Opportunities made by converting a lead, in the period.
    pub converted: u64,
    /// Of the leads and opportunities created: `Close Won` now.
    pub close_won: u64,
    /// ... `Close Lost` now.
    pub close_lost: u64,
    /// ... still open now.
    pub open: u64,
    /// `closeWon / (leads + opportunities)`; null when nothing was created.
    pub conversion_rate: Option<f64>,
    /// Median time from creation to closing (won or lost) of the closed ones, in seconds; null when none.
    pub median_seconds_to_close: Option<f64>,
}

/// The funnel report.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct FunnelReport {
    /// The period's start (RFC 3339), inclusive.
    pub from: String,
    /// The period's end (RFC 3339), exclusive.
    pub to: String,
    pub group_by: GroupByDto,
    /// Groups in ascending order.
    pub groups: Vec<FunnelGroup>,
    /// More than 1000 groups: the rest were left off.
    pub truncated: bool,
}

/// Close-lost changes of one reason, channel and product.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RejectionRowDto {
    /// The close-lost reason, e.g. `NCB_REJECTED`; null when none was given.
    pub reason: Option<String>,
    pub channel: String,
    pub product: String,
    pub count: u64,
}

/// The rejections report: close-lost changes in the period, most frequent first.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RejectionsReport {
    pub from: String,
    pub to: String,
    pub rows: Vec<RejectionRowDto>,
    pub truncated: bool,
}

/// How often records passed from one relationship manager to another.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct HandoverRowDto {
    pub from_owner: String,
    pub to_owner: String,
    pub count: u64,
}

/// The hand-overs report: owner changes in the period, most frequent first.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct HandoversReport {
    pub from: String,
    pub to: String,
    pub rows: Vec<HandoverRowDto>,
    pub truncated: bool,
}

/// One stale open record (no customer data).
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct StaleRecordDto {
    pub id: String,
    #[schema(example = "LEAD")]
    pub record_type: String,
    #[schema(example = "New Lead")]
    pub status: String,
    pub owner_id: String,
    pub channel: String,
    pub product: String,
    /// RFC 3339.
    pub created_at: String,
    /// Whole days since creation.
    pub age_days: i64,
}

/// The stale report: open records older than `olderThanDays`, oldest first, a page at a time.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct StaleReport {
    /// Records created before this instant (RFC 3339) are stale.
    pub cutoff: String,
    pub records: Vec<StaleRecordDto>,
    /// Pass as `cursor` for the next page; null on the last page.
    pub next_cursor: Option<String>,
}

/// What every report may answer besides its report.
#[derive(utoipa::IntoResponses)]
#[allow(dead_code)] // documents the answers; ApiError renders them
pub enum ReportProblems {
    /// The query string cannot be read.
    #[response(status = 400, content_type = "application/problem+json")]
    Malformed(Problem),
    /// UNAUTHENTICATED: missing or unknown API key.
    #[response(status = 401, content_type = "application/problem+json", headers(("WWW-Authenticate" = String)))]
    Unauthenticated(Problem),
    /// FORBIDDEN: not a reporting key.
    #[response(status = 403, content_type = "application/problem+json")]
    Forbidden(Problem),
    /// VALIDATION_FAILED: `errors` names every bad parameter.
    #[response(status = 422, content_type = "application/problem+json")]
    Invalid(Problem),
    /// Backend unavailable.
    #[response(status = 503, content_type = "application/problem+json", headers(("Retry-After" = u32)))]
    Unavailable(Problem),
    /// A bug; details only in the log.
    #[response(status = 500, content_type = "application/problem+json")]
    Internal(Problem),
}

fn store_error(e: store::StoreError) -> ApiError {
    ApiError::from_store(e, "report")
}

/// The sales funnel: records created in the period, by group, and where they stand now.
#[utoipa::path(
    get, path = "/integration-service/int/api/crm/v1/reports/funnel", tag = "reports",
    params(PeriodParams, GroupParams),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The funnel", body = FunnelReport),
        ReportProblems,
    )
)]
pub async fn funnel(State(state): State<AppState>, query: Pairs) -> Result<Json<FunnelReport>, ApiError> {
    let q = pairs(query, &["from", "to", "channel", "product", "groupBy"])?;
    let mut check = Check::default();
    let group_by = match q.get("groupBy").map(String::as_str) {
        None | Some("channel") => GroupByDto::Channel,
        Some("product") => GroupByDto::Product,
        Some("owner") => GroupByDto::Owner,
        Some("day") => GroupByDto::Day,
        Some(_) => {
            check.fail("groupBy", "must be channel, product, owner or day");
            GroupByDto::Channel
        }
    };
    let period = check.period(&q);
    let period = check.done(period)?;
    let rows = state.store.funnel(&period, group_by.into()).await.map_err(store_error)?;
    Ok(Json(FunnelReport {
        from: rfc3339(period.from()),
        to: rfc3339(period.to()),
        group_by,
        truncated: rows.truncated,
        groups: rows
            .rows
            .into_iter()
            .map(|r| FunnelGroup {
                conversion_rate: r.conversion_rate(),
                group: r.group,
                leads: r.leads,
                opportunities: r.opportunities,
                converted: r.converted,
                close_won: r.close_won,
                close_lost: r.close_lost,
                open: r.open,
                median_seconds_to_close: r.median_seconds_to_close,
            })
            .collect(),
    }))
}

fn period_only(query: Pairs) -> Result<Period, ApiError> {
    let q = pairs(query, &["from", "to", "channel", "product"])?;
    let mut check = Check::default();
    let period = check.period(&q);
    check.done(period)
}

/// Close-lost changes in the period by reason, channel and product (e.g. `NCB_REJECTED`, `AML_REJECTED`).
#[utoipa::path(
    get, path = "/integration-service/int/api/crm/v1/reports/rejections", tag = "reports",
    params(PeriodParams),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Close-lost reasons", body = RejectionsReport),
        ReportProblems,
    )
)]
pub async fn rejections(State(state): State<AppState>, query: Pairs) -> Result<Json<RejectionsReport>, ApiError> {
    let period = period_only(query)?;
    let rows = state.store.rejections(&period).await.map_err(store_error)?;
    Ok(Json(RejectionsReport {
        from: rfc3339(period.from()),
        to: rfc3339(period.to()),
        truncated: rows.truncated,
        rows: rows
            .rows
            .into_iter()
            .map(|r| RejectionRowDto {
                reason: r.reason.map(|x| x.as_str().to_owned()),
                channel: r.channel.as_str().to_owned(),
                product: r.product.as_str().to_owned(),
                count: r.count,
            })
            .collect(),
    }))
}

/// Owner changes in the period: records of one relationship manager replaced by one of another.
#[utoipa::path(
    get, path = "/integration-service/int/api/crm/v1/reports/handovers", tag = "reports",
    params(PeriodParams),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Hand-overs between relationship managers", body = HandoversReport),
        ReportProblems,
    )
)]
pub async fn handovers(State(state): State<AppState>, query: Pairs) -> Result<Json<HandoversReport>, ApiError> {
    let period = period_only(query)?;
    let rows = state.store.handovers(&period).await.map_err(store_error)?;
    Ok(Json(HandoversReport {
        from: rfc3339(period.from()),
        to: rfc3339(period.to()),
        truncated: rows.truncated,
        rows: rows
            .rows
            .into_iter()
            .map(|r| HandoverRowDto {
                from_owner: r.from_owner.as_str().to_owned(),
                to_owner: r.to_owner.as_str().to_owned(),
                count: r.count,
            })
            .collect(),
    }))
}

/// Open records older than `olderThanDays`, oldest first, a page at a time.
#[utoipa::path(
    get, path = "/integration-service/int/api/crm/v1/reports/stale", tag = "reports",
    params(StaleParams),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Stale open records", body = StaleReport),
        ReportProblems,
    )
)]
pub async fn stale(State(state): State<AppState>, query: Pairs) -> Result<Json<StaleReport>, ApiError> {
    let q = pairs(query, &["olderThanDays", "limit", "cursor", "channel", "product"])?;
    let mut check = Check::default();
    let days = check.number(&q, "olderThanDays", 30, 3650);
    let limit = check.number(&q, "limit", 100, store::reports::MAX_PAGE);
    let after = q.get("cursor").and_then(|c| {
        StaleCursor::parse(c).or_else(|| {
            check.fail("cursor", "must be the nextCursor of a previous page");
            None
        })
    });
    let (channel, product) = (check.channel(&q), check.product(&q));
    let now = OffsetDateTime::now_utc();
    let query = StaleQuery::new(now, days, limit).ok().map(|mut query| {
        query.after = after;
        query.channel = channel;
        query.product = product;
        query
    });
    let query = check.done(query)?;
    let page = state.store.stale(&query).await.map_err(store_error)?;
    Ok(Json(StaleReport {
        cutoff: rfc3339(query.cutoff()),
        next_cursor: page.next.map(|c| c.encode()),
        records: page
            .records
            .into_iter()
            .map(|r| StaleRecordDto {
                age_days: (now - r.created_at).whole_days(),
                created_at: rfc3339(r.created_at),
                id: r.id,
                record_type: r.record_type.as_str().to_owned(),
                status: r.status.as_str().to_owned(),
                owner_id: r.owner_id.as_str().to_owned(),
                channel: r.channel.as_str().to_owned(),
                product: r.product.as_str().to_owned(),
            })
            .collect(),
    }))
}
