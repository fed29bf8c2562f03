//! Reads: one record with its history, and the search of SPEC §3.

use lifecycle::{
    Channel, Cif, CustomerType, Email, FullName, IdNumber, JourneyId, OwnerId, Phone, Product, Reason, RecordType,
    Status,
};
use sqlx::postgres::PgRow;
use sqlx::{PgPool, Row};
use store::{HistoryEntry, Record, RecordWithHistory, SearchResult, StoreError};
use time::OffsetDateTime;

use crate::error;

const COLUMNS: &str = "id, record_type, status, owner_id, customer_type, id_number, cif, full_name, phone, email,
    product, channel, journey_id, converted_opportunity_id, converted_from_lead_id, created_at, updated_at";

fn parse<T>(v: &str, parse: impl Fn(&str) -> Result<T, lifecycle::Invalid>) -> Result<T, StoreError> {
    parse(v).map_err(StoreError::internal)
}

fn opt<T>(v: Option<String>, p: impl Fn(&str) -> Result<T, lifecycle::Invalid>) -> Result<Option<T>, StoreError> {
    v.map(|s| parse(&s, &p)).transpose()
}

fn record(r: &PgRow) -> Result<Record, StoreError> {
    let text = |c: &str| r.try_get::<String, _>(c).map_err(error);
    let maybe = |c: &str| r.try_get::<Option<String>, _>(c).map_err(error);
    let at = |c: &str| r.try_get::<OffsetDateTime, _>(c).map_err(error);
    Ok(Record {
        id: text("id")?,
        record_type: parse(&text("record_type")?, RecordType::parse)?,
        status: parse(&text("status")?, Status::parse)?,
        owner_id: OwnerId::from_stored(text("owner_id")?),
        customer_type: parse(&text("customer_type")?, CustomerType::parse)?,
        id_number: IdNumber::from_stored(text("id_number")?),
        cif: maybe("cif")?.map(Cif::from_stored),
        full_name: maybe("full_name")?.map(FullName::from_stored),
        phone: maybe("phone")?.map(Phone::from_stored),
        email: maybe("email")?.map(Email::from_stored),
        product: Product::from_stored(text("product")?),
        channel: Channel::from_stored(text("channel")?),
        journey_id: maybe("journey_id")?.map(JourneyId::from_stored),
        converted_opportunity_id: maybe("converted_opportunity_id")?,
        converted_from_lead_id: maybe("converted_from_lead_id")?,
        created_at: at("created_at")?,
        updated_at: at("updated_at")?,
    })
}

pub(crate) async fn get(
    pool: &PgPool,
    record_type: RecordType,
    id: &str,
) -> Result<Option<RecordWithHistory>, StoreError> {
    // One snapshot for both statements: a change committed between them could otherwise show a status
    // the history does not have yet (or a history entry past the status).
    let mut tx = pool.begin_with("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY").await.map_err(error)?;
    let row = sqlx::query(&format!("SELECT {COLUMNS} FROM records WHERE id = $1 AND record_type = $2"))
        .bind(id)
        .bind(record_type.as_str())
        .fetch_optional(&mut *tx)
        .await
        .map_err(error)?;
    let Some(row) = row else { return Ok(None) };
    let record = record(&row)?;
    let rows = sqlx::query(
        "SELECT from_status, to_status, at, request_id, channel, reason FROM history WHERE record_id = $1 ORDER BY seq",
    )
    .bind(id)
    .fetch_all(&mut *tx)
    .await
    .map_err(error)?;
    // Read-only: ending it either way releases the snapshot; commit says so without a warning.
    tx.commit().await.map_err(error)?;
    let history = rows.iter().map(history_entry).collect::<Result<_, _>>()?;
    Ok(Some(RecordWithHistory { record, history }))
}

/// One history row (`from_status, to_status, at, request_id, channel, reason`), of `history` or `audit`.
pub(crate) fn history_entry(r: &PgRow) -> Result<HistoryEntry, StoreError> {
    Ok(HistoryEntry {
        from: opt(r.try_get("from_status").map_err(error)?, Status::parse)?,
        to: parse(&r.try_get::<String, _>("to_status").map_err(error)?, Status::parse)?,
        at: r.try_get("at").map_err(error)?,
        request_id: r.try_get("request_id").map_err(error)?,
        channel: Channel::from_stored(r.try_get("channel").map_err(error)?),
        reason: r.try_get::<Option<String>, _>("reason").map_err(error)?.map(Reason::from_stored),
    })
}

pub(crate) async fn search(
    pool: &PgPool,
    id_number: &IdNumber,
    product: Option<&Product>,
) -> Result<SearchResult, StoreError> {
    let rows = sqlx::query(&format!(
        "SELECT {COLUMNS} FROM records WHERE id_number = $1 AND ($2::text IS NULL OR product = $2) ORDER BY seq DESC"
    ))
    .bind(id_number.expose())
    .bind(product.map(Product::as_str))
    .fetch_all(pool)
    .await
    .map_err(error)?;
    let mut result = SearchResult::default();
    for row in &rows {
        let rec = record(row)?;
        match rec.record_type {
            RecordType::Lead => result.leads.push(rec),
            RecordType::Opportunity => result.opportunities.push(rec),
        }
    }
    Ok(result)
}
