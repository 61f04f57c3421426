//! The web dashboard of `jobhost run --http`, at `/`: server-rendered pages (maud), the
//! stylesheet and a few lines of script embedded in the binary, charts as inline SVG. Every
//! action is a plain HTML form (POST, then a redirect back), so the pages work without
//! script; the script only refreshes a page in place while something on it is running.
//!
//! Screens: overview (`/`), jobs (`/ui/jobs`), a job (`/ui/jobs/{id}`), dead letters
//! (`/ui/dead`), schedules (`/ui/schedules`), handlers (`/ui/handlers`).
//!
//! Actions go through the same [`super::http::Access`] rules as the API: refused in
//! `--read-only` mode; with an admin token they need it (the sign-in form keeps it in an
//! HTTP-only, same-site cookie; a form field or an `Authorization` header work too); without
//! one, only on loopback.

use std::fmt::Write as _;
use std::time::Duration;

use axum::Router;
use axum::extract::{Form, Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use maud::{DOCTYPE, Markup, PreEscaped, html};
use serde::Deserialize;

use super::http::Api;
use crate::clock::to_ms;
use crate::queue::{Administer, CancelResult, Inspect, JobFilter, JobRecord, NewJob, Redrive};

const STYLE: &str = include_str!("dashboard/app.css");
const SCRIPT: &str = include_str!("dashboard/app.js");
/// Jobs per page.
const PAGE: usize = 50;
/// The cookie the sign-in form sets.
const TOKEN_COOKIE: &str = "jobhost_token";

/// The dashboard's routes.
pub(crate) fn routes<Q: Inspect + Administer>() -> Router<Api<Q>> {
    Router::new()
        .route("/", get(overview::<Q>))
        .route("/ui/jobs", get(jobs::<Q>))
        .route("/ui/jobs/{id}", get(job::<Q>))
        .route("/ui/jobs/{id}/cancel", post(cancel::<Q>))
        .route("/ui/jobs/{id}/retry", post(retry::<Q>))
        .route("/ui/jobs/{id}/delete", post(delete::<Q>))
        .route("/ui/dead", get(dead::<Q>))
        .route("/ui/dead/retry-all", post(retry_all::<Q>))
        .route("/ui/dead/purge", post(purge::<Q>))
        .route("/ui/schedules", get(schedules::<Q>))
        .route("/ui/schedules/{index}/run", post(run_schedule::<Q>))
        .route("/ui/handlers", get(handlers::<Q>))
        .route("/ui/handlers/{name}/pause", post(pause::<Q>))
        .route("/ui/handlers/{name}/resume", post(resume::<Q>))
        .route("/ui/sign-in", post(sign_in::<Q>))
        .route(
            "/ui/app.css",
            get(|| async { ([(header::CONTENT_TYPE, "text/css")], STYLE) }),
        )
        .route(
            "/ui/app.js",
            get(|| async { ([(header::CONTENT_TYPE, "text/javascript")], SCRIPT) }),
        )
}

#[derive(Debug, Default, Deserialize)]
struct Notice {
    msg: Option<String>,
}

/// An action's form: the token, when the sign-in cookie is not used.
#[derive(Debug, Default, Deserialize)]
struct ActionForm {
    token: Option<String>,
}

/// An action that may go ahead (the extractor refuses it with the "Not allowed" page
/// otherwise): the token from the form, the sign-in cookie or the `Authorization` header.
struct Act<Q>(Api<Q>);

/// The page refusing an action.
struct Refused(Box<Response>);

impl IntoResponse for Refused {
    fn into_response(self) -> Response {
        *self.0
    }
}

impl<Q: Inspect + Administer> axum::extract::FromRequest<Api<Q>> for Act<Q> {
    type Rejection = Refused;

    async fn from_request(request: axum::extract::Request, api: &Api<Q>) -> Result<Self, Refused> {
        let headers = request.headers().clone();
        let form = Form::<ActionForm>::from_request(request, api)
            .await
            .map(|Form(form)| form)
            .unwrap_or_default();
        match refused(api, &headers, &form) {
            Some(page) => Err(Refused(Box::new(page))),
            None => Ok(Act(api.clone())),
        }
    }
}

fn page<Q>(
    api: &Api<Q>,
    title: &str,
    notice: Option<&str>,
    refresh: bool,
    body: Markup,
) -> Response {
    let nav = [
        ("/", "Overview"),
        ("/ui/jobs", "Jobs"),
        ("/ui/dead", "Dead letters"),
        ("/ui/schedules", "Schedules"),
        ("/ui/handlers", "Handlers"),
    ];
    let markup = html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · jobhost" }
                link rel="stylesheet" href="/ui/app.css";
                script src="/ui/app.js" defer {}
            }
            body data-refresh=[refresh.then_some("2000")] {
                header {
                    a.brand href="/" { "jobhost" }
                    nav { @for (href, label) in nav { a href=(href) { (label) } } }
                    @if api.access.read_only { span.badge { "read-only" } }
                    @if api.access.token.is_some() && !api.access.read_only {
                        form.signin method="post" action="/ui/sign-in" {
                            input type="password" name="token" placeholder="admin token" aria-label="admin token";
                            button { "Sign in" }
                        }
                    }
                }
                main id="main" {
                    @if let Some(text) = notice { p.notice role="status" { (text) } }
                    h1 { (title) }
                    (body)
                }
            }
        }
    };
    (
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        markup.into_string(),
    )
        .into_response()
}

fn failed(error: impl std::fmt::Display) -> Response {
    (
        StatusCode::SERVICE_UNAVAILABLE,
        format!("the queue cannot be read: {error}"),
    )
        .into_response()
}

fn time(ms: Option<i64>) -> String {
    ms.and_then(chrono::DateTime::from_timestamp_millis)
        .map(|t| t.format("%Y-%m-%d %H:%M:%S").to_string())
        .unwrap_or_default()
}

fn state_badge(state: &str) -> Markup {
    html! { span class={ "state " (state) } { (state) } }
}

async fn overview<Q: Inspect + Administer>(
    State(api): State<Api<Q>>,
    Query(notice): Query<Notice>,
) -> Response {
    let now = to_ms(api.clock.now());
    let hour_ago = now - 3_600_000;
    let (stats, minutes) = match (
        api.queue.stats().await,
        api.queue.finished_per_minute(hour_ago).await,
    ) {
        (Ok(stats), Ok(minutes)) => (stats, minutes),
        (Err(e), _) | (_, Err(e)) => return failed(e),
    };
    let states = ["queued", "running", "done", "dead", "cancelled"];
    let total = |state: &str| -> u64 {
        stats
            .counts
            .iter()
            .filter(|(_, s, _)| s == state)
            .map(|(_, _, n)| n)
            .sum()
    };
    let mut names: Vec<&str> = stats.counts.iter().map(|(n, _, _)| n.as_str()).collect();
    names.dedup();
    let count = |name: &str, state: &str| -> u64 {
        stats
            .counts
            .iter()
            .find(|(n, s, _)| n == name && s == state)
            .map_or(0, |c| c.2)
    };
    // Per minute of the last hour, oldest first.
    let first_minute = hour_ago / 60_000 + 1;
    let mut done = vec![0u64; 60];
    let mut dead = vec![0u64; 60];
    for (minute, state, n) in &minutes {
        let Ok(slot) = usize::try_from(minute - first_minute) else {
            continue;
        };
        if slot < 60 {
            match state.as_str() {
                "done" => done[slot] += n,
                _ => dead[slot] += n,
            }
        }
    }
    let rate: Vec<f64> = done
        .iter()
        .zip(&dead)
        .map(|(d, f)| {
            if d + f == 0 {
                0.0
            } else {
                *f as f64 / (d + f) as f64 * 100.0
            }
        })
        .collect();
    let body = html! {
        section.cards {
            @for state in states {
                a.card href={ "/ui/jobs?state=" (state) } {
                    span.count data-state=(state) { (total(state)) }
                    span.label { (state) }
                }
            }
            div.card {
                span.count { (stats.oldest_queued_age_ms.map_or("–".to_string(), |ms| format!("{:.1}s", ms as f64 / 1000.0))) }
                span.label { "oldest due job waiting" }
            }
        }
        section.charts {
            figure {
                figcaption { "Jobs done per minute, last hour (" (done.iter().sum::<u64>()) ")" }
                (bar_chart(&done.iter().map(|&n| n as f64).collect::<Vec<_>>(), None, "done"))
            }
            figure {
                figcaption { "Failure rate per minute, last hour (dead letters / finished, %)" }
                (bar_chart(&rate, Some(100.0), "dead"))
            }
        }
        h2 { "By job name" }
        table {
            thead { tr { th { "job" } @for state in states { th { (state) } } th { "" } } }
            tbody {
                @for name in &names {
                    tr {
                        td { a href={ "/ui/jobs?name=" (name) } { (name) } }
                        @for state in states { td.num { (count(name, state)) } }
                        td { @if stats.paused.iter().any(|p| p == name) { span.badge.paused { "paused" } } }
                    }
                }
            }
        }
    };
    page(&api, "Overview", notice.msg.as_deref(), true, body)
}

/// Bars as inline SVG, 60 values, scaled to `max` (default: the largest).
fn bar_chart(values: &[f64], max: Option<f64>, class: &str) -> Markup {
    let max = max.unwrap_or_else(|| values.iter().copied().fold(0.0, f64::max).max(1.0));
    let mut bars = String::new();
    for (i, v) in values.iter().enumerate() {
        let h = v / max * 100.0;
        let _ = write!(
            bars,
            r#"<rect x="{}" y="{:.1}" width="8" height="{:.1}"><title>{:.1}</title></rect>"#,
            i * 10,
            100.0 - h,
            h,
            v
        );
    }
    html! {
        svg class={ "chart " (class) } viewBox="0 0 600 100" preserveAspectRatio="none" role="img" {
            (PreEscaped(bars))
        }
    }
}

#[derive(Debug, Default, Deserialize)]
struct JobsQuery {
    state: Option<String>,
    name: Option<String>,
    id: Option<String>,
    page: Option<usize>,
    msg: Option<String>,
}

fn jobs_table(records: &[JobRecord]) -> Markup {
    html! {
        table.jobs {
            thead { tr { th { "id" } th { "job" } th { "state" } th { "attempts" } th { "reason" } th { "updated" } } }
            tbody {
                @for r in records {
                    tr {
                        td { a.id href={ "/ui/jobs/" (r.id) } { (r.id) } }
                        td { (r.name) }
                        td { (state_badge(&r.state)) }
                        td.num { (r.attempts) }
                        td { (r.reason.as_deref().unwrap_or("")) }
                        td { (time(Some(r.updated_at))) }
                    }
                }
            }
        }
    }
}

async fn jobs<Q: Inspect + Administer>(
    State(api): State<Api<Q>>,
    Query(query): Query<JobsQuery>,
) -> Response {
    if let Some(id) = query
        .id
        .as_deref()
        .map(str::trim)
        .filter(|id| !id.is_empty())
    {
        return Redirect::to(&format!("/ui/jobs/{}", urlencode(id))).into_response();
    }
    let state = query.state.filter(|s| !s.is_empty());
    let name = query.name.filter(|s| !s.is_empty());
    let page_number = query.page.unwrap_or(1).max(1);
    let filter = JobFilter {
        state: state.clone(),
        name: name.clone(),
        limit: PAGE + 1,
        offset: (page_number - 1) * PAGE,
        parent: None,
    };
    let (mut records, stats) = match (api.queue.jobs(filter).await, api.queue.stats().await) {
        (Ok(records), Ok(stats)) => (records, stats),
        (Err(e), _) | (_, Err(e)) => return failed(e),
    };
    let more = records.len() > PAGE;
    records.truncate(PAGE);
    let mut names: Vec<&str> = stats.counts.iter().map(|(n, _, _)| n.as_str()).collect();
    names.dedup();
    let link = |page: usize| {
        format!(
            "/ui/jobs?state={}&name={}&page={page}",
            urlencode(state.as_deref().unwrap_or("")),
            urlencode(name.as_deref().unwrap_or(""))
        )
    };
    let body = html! {
        form.filters method="get" action="/ui/jobs" {
            label { "state " select name="state" {
                option value="" { "any" }
                @for s in ["queued", "running", "done", "dead", "cancelled"] {
                    option value=(s) selected[state.as_deref() == Some(s)] { (s) }
                }
            } }
            label { "job " select name="name" {
                option value="" { "any" }
                @for n in &names { option value=(n) selected[name.as_deref() == Some(*n)] { (n) } }
            } }
            button { "Filter" }
        }
        form.find method="get" action="/ui/jobs" {
            input type="search" name="id" placeholder="find a job by id" aria-label="job id";
            button { "Find" }
        }
        (jobs_table(&records))
        nav.pages {
            @if page_number > 1 { a href=(link(page_number - 1)) rel="prev" { "← newer" } }
            span { "page " (page_number) }
            @if more { a href=(link(page_number + 1)) rel="next" { "older →" } }
        }
    };
    page(&api, "Jobs", query.msg.as_deref(), false, body)
}

async fn job<Q: Inspect + Administer>(
    State(api): State<Api<Q>>,
    Path(id): Path<String>,
    Query(notice): Query<Notice>,
) -> Response {
    let record = match api.queue.job(&id).await {
        Ok(Some(record)) => record,
        Ok(None) => {
            let body = html! { p { "No job " code { (id) } "." } };
            let mut response = page(&api, "Not found", None, false, body);
            *response.status_mut() = StatusCode::NOT_FOUND;
            return response;
        }
        Err(e) => return failed(e),
    };
    // Follow-up jobs are committed only with their parent's success, so only a done job
    // has any: the (unindexed) lookup is not repeated on every refresh of a running job.
    let children = if record.state == "done" {
        api.queue
            .jobs(JobFilter {
                parent: Some(record.id.clone()),
                limit: 100,
                ..JobFilter::default()
            })
            .await
            .unwrap_or_default()
    } else {
        Vec::new()
    };
    let pretty =
        |value: &serde_json::Value| serde_json::to_string_pretty(value).unwrap_or_default();
    let output = record.output.as_deref().map(|text| {
        serde_json::from_str::<serde_json::Value>(text)
            .map_or_else(|_| text.to_string(), |v| pretty(&v))
    });
    let running = record.state == "running";
    let can_cancel = matches!(record.state.as_str(), "queued" | "running");
    let body = html! {
        section.actions {
            (state_badge(&record.state))
            @if record.cancel_requested && running { span.badge { "cancelling" } }
            @if can_cancel && !api.access.read_only {
                form method="post" action={ "/ui/jobs/" (record.id) "/cancel" } data-confirm="Cancel this job?" {
                    button.danger { "Cancel" }
                }
            }
            @if record.state == "dead" && !api.access.read_only {
                form method="post" action={ "/ui/jobs/" (record.id) "/retry" } { button { "Retry" } }
                form method="post" action={ "/ui/jobs/" (record.id) "/delete" } data-confirm="Delete this dead job?" {
                    button.danger { "Delete" }
                }
            }
        }
        dl.facts {
            dt { "id" } dd { code { (record.id) } }
            dt { "job" } dd { (record.name) }
            dt { "attempts" } dd { (record.attempts) @if let Some(max) = record.max_attempts { " of " (max) } }
            dt { "created" } dd { (time(Some(record.created_at))) }
            dt { "due" } dd { (time(Some(record.run_at))) }
            dt { "started" } dd { (time(record.started_at)) }
            dt { "finished" } dd { (time(record.finished_at)) }
            @if let Some(parent) = &record.parent_id {
                dt { "parent" } dd { a href={ "/ui/jobs/" (parent) } { (parent) } }
            }
            @if let Some(reason) = &record.reason { dt { "reason" } dd { (reason) } }
            @if let Some(error) = &record.last_error { dt { "last error" } dd.error { (error) } }
        }
        @if let Some(progress) = &record.progress {
            h2 { "Progress" }
            @let done = progress["done"].as_u64().unwrap_or(0);
            @let total = progress["total"].as_u64().unwrap_or(0).max(1);
            div.progress {
                progress value=(done) max=(total) {}
                span.progress-text { (done) " / " (total) " " (progress["message"].as_str().unwrap_or("")) }
            }
        }
        @if let Some(cost) = &record.cost {
            h2 { "Cost (latest attempt)" }
            dl.facts.cost {
                dt { "run time" } dd { (format!("{:.2} ms", cost.run_ms)) }
                dt { "wait" } dd { (cost.wait_ms.map_or("–".to_string(), |ms| format!("{ms} ms"))) }
                dt { "fuel" } dd { (cost.fuel) }
                dt { "peak memory" } dd { (format!("{:.1} MiB", cost.peak_memory_bytes as f64 / 1048576.0)) }
            }
        }
        h2 { "Payload" }
        pre { (record.body.clone().unwrap_or_else(|| pretty(&record.payload))) }
        @if let Some(output) = output { h2 { "Output" } pre { (output) } }
        @if !record.logs.is_empty() {
            h2 { "Logs" }
            pre.logs {
                @for line in &record.logs {
                    (line["level"].as_str().unwrap_or("")) " " (line["source"].as_str().unwrap_or("")) ": " (line["message"].as_str().unwrap_or("")) "\n"
                }
            }
        }
        @if !children.is_empty() { h2 { "Follow-up jobs" } (jobs_table(&children)) }
    };
    page(
        &api,
        &format!("Job {}", record.name),
        notice.msg.as_deref(),
        running,
        body,
    )
}

async fn dead<Q: Inspect + Administer>(
    State(api): State<Api<Q>>,
    Query(notice): Query<Notice>,
) -> Response {
    let filter = JobFilter {
        state: Some("dead".into()),
        limit: 200,
        ..JobFilter::default()
    };
    let records = match api.queue.jobs(filter).await {
        Ok(records) => records,
        Err(e) => return failed(e),
    };
    let body = html! {
        @if !api.access.read_only && !records.is_empty() {
            section.actions {
                form method="post" action="/ui/dead/retry-all" { button { "Retry all" } }
                form method="post" action="/ui/dead/purge" data-confirm="Delete every dead job?" { button.danger { "Delete all" } }
            }
        }
        @if records.is_empty() { p { "No dead letters." } }
        @for r in &records {
            article.dead {
                header {
                    a.id href={ "/ui/jobs/" (r.id) } { (r.id) }
                    " " (r.name) " "
                    span.reason { (r.reason.as_deref().unwrap_or("")) }
                    " after " (r.attempts) " attempt(s), " (time(r.finished_at))
                }
                p.error { (r.last_error.as_deref().unwrap_or("")) }
                pre { (r.body.clone().unwrap_or_else(|| r.payload.to_string())) }
                @if !api.access.read_only {
                    form method="post" action={ "/ui/jobs/" (r.id) "/retry" } { button { "Retry" } }
                    form method="post" action={ "/ui/jobs/" (r.id) "/delete" } data-confirm="Delete this dead job?" { button.danger { "Delete" } }
                }
            }
        }
    };
    page(&api, "Dead letters", notice.msg.as_deref(), false, body)
}

/// Every `[[schedule]]` of the loaded handlers, in the scheduler's order.
fn schedule_entries<Q>(api: &Api<Q>) -> Vec<(String, crate::plugin::Schedule)> {
    let mut entries = Vec::new();
    for plugin in api.dispatcher.plugins().plugins() {
        for schedule in &plugin.manifest.schedule {
            let job = schedule
                .job
                .clone()
                .unwrap_or_else(|| plugin.names[0].clone());
            entries.push((job, schedule.clone()));
        }
    }
    entries
}

async fn schedules<Q: Inspect + Administer>(
    State(api): State<Api<Q>>,
    Query(notice): Query<Notice>,
) -> Response {
    let now = chrono::DateTime::<chrono::Utc>::from(api.clock.now());
    let entries = schedule_entries(&api);
    let body = html! {
        @if entries.is_empty() { p { "No handler has a " code { "[[schedule]]" } "." } }
        @if !entries.is_empty() {
            table {
                thead { tr { th { "job" } th { "cron (UTC)" } th { "payload" } th { "next ticks" } th { "" } } }
                tbody {
                    @for (index, (job, schedule)) in entries.iter().enumerate() {
                        tr {
                            td { (job) }
                            td { code { (schedule.cron) } }
                            td { code { (schedule.payload.to_string()) } }
                            td {
                                @if let Ok(cron) = schedule.cron() {
                                    ul.ticks {
                                        @for tick in cron.iter_after(now).take(3) {
                                            li { (tick.format("%Y-%m-%d %H:%M:%S")) }
                                        }
                                    }
                                }
                            }
                            td {
                                @if !api.access.read_only {
                                    form method="post" action={ "/ui/schedules/" (index) "/run" } { button { "Run now" } }
                                }
                            }
                        }
                    }
                }
            }
        }
    };
    page(&api, "Schedules", notice.msg.as_deref(), false, body)
}

async fn handlers<Q: Inspect + Administer>(
    State(api): State<Api<Q>>,
    Query(notice): Query<Notice>,
) -> Response {
    let paused = match api.queue.stats().await {
        Ok(stats) => stats.paused,
        Err(e) => return failed(e),
    };
    let plugins = api.dispatcher.plugins();
    let body = html! {
        @for plugin in plugins.plugins() {
            article.handler {
                h2 { (plugin.path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()) " " small { "version " (plugin.version) } }
                table {
                    tbody {
                        @for name in &plugin.names {
                            tr {
                                td { code { (name) } }
                                td {
                                    @if paused.contains(name) {
                                        span.badge.paused { "paused" }
                                        @if !api.access.read_only {
                                            form method="post" action={ "/ui/handlers/" (urlencode(name)) "/resume" } { button { "Resume" } }
                                        }
                                    } @else if !api.access.read_only {
                                        form method="post" action={ "/ui/handlers/" (urlencode(name)) "/pause" } { button { "Pause" } }
                                    }
                                }
                            }
                        }
                    }
                }
                details {
                    summary { "Schema, limits and grants" }
                    h3 { "Payload schema" }
                    pre { (plugin.schema.as_ref().map(|s| pretty_json(s.text())).unwrap_or_else(|| "none".into())) }
                    h3 { "Limits" }
                    pre { (toml::to_string(&plugin.manifest.limits).unwrap_or_default()) }
                    h3 { "Grants" }
                    pre { (toml::to_string(&plugin.manifest.grants).ok().filter(|g| !g.trim().is_empty()).unwrap_or_else(|| "none".into())) }
                }
            }
        }
        @if !plugins.errors().is_empty() {
            h2 { "Refused at load" }
            ul.refused {
                @for error in plugins.errors() { li.error { (error.to_string()) } }
            }
        }
    };
    page(&api, "Handlers", notice.msg.as_deref(), false, body)
}

fn pretty_json(text: &str) -> String {
    serde_json::from_str::<serde_json::Value>(text)
        .and_then(|v| serde_json::to_string_pretty(&v))
        .unwrap_or_else(|_| text.to_string())
}

/// The page refusing an action, unless it may go ahead: the token from the form, the
/// sign-in cookie or the `Authorization` header.
fn refused<Q>(api: &Api<Q>, headers: &HeaderMap, form: &ActionForm) -> Option<Response> {
    let mut headers = headers.clone();
    let token = form
        .token
        .clone()
        .or_else(|| cookie(&headers, TOKEN_COOKIE));
    if let Some(token) = token
        && let Ok(value) = format!("Bearer {token}").parse()
    {
        headers.insert(header::AUTHORIZATION, value);
    }
    api.access.check(&headers).err().map(|(status, why)| {
        let body = html! { p.error { (why) } p { a href="/" { "Back" } } };
        let mut response = page(api, "Not allowed", None, false, body);
        *response.status_mut() = status;
        response
    })
}

fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(key, _)| *key == name)
        .map(|(_, value)| value.to_string())
}

fn back(to: &str, message: &str) -> Response {
    let separator = if to.contains('?') { '&' } else { '?' };
    Redirect::to(&format!("{to}{separator}msg={}", urlencode(message))).into_response()
}

fn urlencode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

async fn sign_in<Q: Inspect + Administer>(
    State(api): State<Api<Q>>,
    Form(form): Form<ActionForm>,
) -> Response {
    let token = form.token.unwrap_or_default();
    let right = api
        .access
        .token
        .as_deref()
        .is_some_and(|t| super::http::constant_time_eq(t.as_bytes(), token.as_bytes()));
    if !right {
        let body = html! { p.error { "That is not the admin token." } p { a href="/" { "Back" } } };
        let mut response = page(&api, "Not signed in", None, false, body);
        *response.status_mut() = StatusCode::UNAUTHORIZED;
        return response;
    }
    let cookie = format!("{TOKEN_COOKIE}={token}; HttpOnly; SameSite=Strict; Path=/");
    let mut response = back("/", "signed in");
    if let Ok(value) = cookie.parse() {
        response.headers_mut().insert(header::SET_COOKIE, value);
    }
    response
}

async fn cancel<Q: Inspect + Administer>(Path(id): Path<String>, Act(api): Act<Q>) -> Response {
    let to = format!("/ui/jobs/{}", urlencode(&id));
    match api.queue.cancel(&id).await {
        Ok(CancelResult::Cancelled) => back(&to, "cancelled"),
        Ok(CancelResult::Requested) => {
            if let Some(running) = &api.running {
                running.cancel(&id);
            }
            // Give the host a moment to stop it, so the page shows the outcome.
            tokio::time::sleep(Duration::from_millis(300)).await;
            back(&to, "cancelling: the host running it stops it")
        }
        Ok(CancelResult::NotFound) => back("/ui/jobs", "no such job"),
        Ok(CancelResult::NotQueued(state)) => back(&to, &format!("it is {state} already")),
        Err(e) => failed(e),
    }
}

async fn retry<Q: Inspect + Administer>(Path(id): Path<String>, Act(api): Act<Q>) -> Response {
    match api.queue.redrive(Redrive::One(id.clone())).await {
        Ok(1) => {
            api.wake.notify_one();
            back(&format!("/ui/jobs/{}", urlencode(&id)), "queued again")
        }
        Ok(_) => back("/ui/dead", "that job is not dead"),
        Err(e) => failed(e),
    }
}

async fn delete<Q: Inspect + Administer>(Path(id): Path<String>, Act(api): Act<Q>) -> Response {
    match api.queue.delete_dead(&id).await {
        Ok(true) => back("/ui/dead", "deleted"),
        Ok(false) => back("/ui/dead", "that job is not dead"),
        Err(e) => failed(e),
    }
}

async fn retry_all<Q: Inspect + Administer>(Act(api): Act<Q>) -> Response {
    match api.queue.redrive(Redrive::All).await {
        Ok(n) => {
            api.wake.notify_one();
            back("/ui/dead", &format!("{n} queued again"))
        }
        Err(e) => failed(e),
    }
}

async fn purge<Q: Inspect + Administer>(Act(api): Act<Q>) -> Response {
    match api.queue.purge_dead().await {
        Ok(n) => back("/ui/dead", &format!("{n} deleted")),
        Err(e) => failed(e),
    }
}

async fn run_schedule<Q: Inspect + Administer>(
    Path(index): Path<usize>,
    Act(api): Act<Q>,
) -> Response {
    let Some((job, schedule)) = schedule_entries(&api).into_iter().nth(index) else {
        return back("/ui/schedules", "no such schedule");
    };
    match api
        .queue
        .enqueue(vec![NewJob::new(job.clone(), schedule.payload)])
        .await
    {
        Ok(enqueued) => {
            api.wake.notify_one();
            let id = enqueued
                .first()
                .map(|e| e.id().to_string())
                .unwrap_or_default();
            back(
                &format!("/ui/jobs/{}", urlencode(&id)),
                &format!("{job} enqueued now"),
            )
        }
        Err(e) => failed(e),
    }
}

async fn pause<Q: Inspect + Administer>(Path(name): Path<String>, Act(api): Act<Q>) -> Response {
    match api.queue.pause(&name).await {
        Ok(_) => back("/ui/handlers", &format!("{name} paused")),
        Err(e) => failed(e),
    }
}

async fn resume<Q: Inspect + Administer>(Path(name): Path<String>, Act(api): Act<Q>) -> Response {
    match api.queue.resume(&name).await {
        Ok(_) => {
            api.wake.notify_one();
            back("/ui/handlers", &format!("{name} resumed"))
        }
        Err(e) => failed(e),
    }
}
