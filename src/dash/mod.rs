//! The web dashboard every node serves on its HTTP listener: the cluster, the queues, the
//! tasks and each task's story, the leases running now and the recent verdicts, with cancel
//! and retry. Pages are rendered here (they work without JavaScript); a small script of our
//! own (`assets/app.js`, no build step) keeps them live over server-sent events. The JSON
//! endpoints behind the pages are documented in docs/DASHBOARD.md.
//!
//! Reads come from this node's applied state, with no read barrier: any node shows the whole
//! cluster, and keeps answering while there is no leader. With `--auth-file`, every page and
//! endpoint needs a token (a bearer header, or the cookie the token form sets) with the role
//! the same gRPC call needs.
mod data;
mod html;
mod live;
mod pages;

use crate::api::scheduler::SchedulerSvc;
use crate::auth::{authorize, Auth, Need};
use crate::node::Node;
use crate::proto::v1::{self as pb, scheduler_server::Scheduler};
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Form, Json, Router};
use std::sync::Arc;
use std::time::Duration;
use tonic::Code;

pub use data::{Filter, MAX_TASKS_PAGE};

/// The cookie the token form sets.
pub const TOKEN_COOKIE: &str = "leasekeeper_token";
/// The header every action (POST) must carry: a page of another site cannot send it.
pub const ACTION_HEADER: &str = "x-leasekeeper-action";
/// How long a member's status is awaited for a page.
const STATUS_TIMEOUT: Duration = Duration::from_millis(500);
/// Bodies of actions and of the token form, at most.
const MAX_BODY_BYTES: usize = 16 << 10;

/// What the dashboard's handlers share.
pub struct Dash {
    node: Arc<Node>,
    auth: Option<Arc<Auth>>,
    scheduler: SchedulerSvc,
    /// The trace UI's address of a trace, `{trace_id}` standing for its id.
    trace_url: Option<String>,
}

type Shared = State<Arc<Dash>>;

/// The dashboard's routes (pages, assets, JSON endpoints, the live stream and the actions).
pub fn routes(node: Arc<Node>, auth: Option<Arc<Auth>>) -> Router {
    let scheduler = SchedulerSvc {
        node: node.clone(),
        auth: auth.clone(),
        watchers: crate::api::validate::StreamSlots::new(
            "dashboard live",
            node.config.limits.max_watchers,
        ),
    };
    let dash = Arc::new(Dash {
        trace_url: node.config.trace_url.clone(),
        node,
        auth,
        scheduler,
    });
    Router::new()
        .route("/", get(pages::overview))
        .route("/tasks", get(pages::task_list))
        .route("/tasks/:id", get(pages::task_page))
        .route("/running", get(pages::running))
        .route("/verdicts", get(pages::verdicts))
        .route("/login", get(pages::login).post(login))
        .route("/logout", post(logout))
        .route("/assets/app.js", get(|| asset("text/javascript", APP_JS)))
        .route("/assets/style.css", get(|| asset("text/css", STYLE_CSS)))
        .route("/api/v1/cluster", get(api_cluster))
        .route("/api/v1/queues", get(api_queues))
        .route("/api/v1/tasks", get(api_tasks))
        .route("/api/v1/tasks/:id", get(api_task))
        .route("/api/v1/tasks/:id/cancel", post(api_cancel))
        .route("/api/v1/tasks/:id/retry", post(api_retry))
        .route("/api/v1/leases", get(api_leases))
        .route("/api/v1/verdicts", get(api_verdicts))
        .route("/api/v1/watch", get(live::watch))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(dash)
}

const APP_JS: &str = include_str!("assets/app.js");
const STYLE_CSS: &str = include_str!("assets/style.css");

async fn asset(kind: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, kind),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

/// A refusal, as a status code and a message that says what to do.
#[derive(Debug)]
pub struct Refusal {
    pub code: StatusCode,
    pub grpc: Code,
    pub message: String,
}

impl Refusal {
    fn bad(message: impl Into<String>) -> Refusal {
        Refusal {
            code: StatusCode::BAD_REQUEST,
            grpc: Code::InvalidArgument,
            message: message.into(),
        }
    }
    fn not_found(message: impl Into<String>) -> Refusal {
        Refusal {
            code: StatusCode::NOT_FOUND,
            grpc: Code::NotFound,
            message: message.into(),
        }
    }
}

impl From<tonic::Status> for Refusal {
    fn from(s: tonic::Status) -> Refusal {
        let code = match s.code() {
            Code::InvalidArgument | Code::OutOfRange => StatusCode::BAD_REQUEST,
            Code::Unauthenticated => StatusCode::UNAUTHORIZED,
            Code::PermissionDenied => StatusCode::FORBIDDEN,
            Code::NotFound => StatusCode::NOT_FOUND,
            Code::FailedPrecondition | Code::AlreadyExists | Code::Aborted => StatusCode::CONFLICT,
            Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
            Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            Code::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        Refusal {
            code,
            grpc: s.code(),
            message: s.message().to_string(),
        }
    }
}

/// JSON endpoints answer a refusal as `{"error": {"code": "PERMISSION_DENIED", "message": …}}`.
impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        let body = serde_json::json!({"error": {
            "code": code_name(self.grpc),
            "message": self.message,
        }});
        (self.code, Json(body)).into_response()
    }
}

fn code_name(c: Code) -> &'static str {
    match c {
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unauthenticated => "UNAUTHENTICATED",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::NotFound => "NOT_FOUND",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::Unavailable => "UNAVAILABLE",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        _ => "INTERNAL",
    }
}

/// The caller's credentials as the gRPC checks read them: its bearer header, or else the
/// token cookie.
fn caller(headers: &HeaderMap) -> tonic::metadata::MetadataMap {
    let mut md = tonic::metadata::MetadataMap::new();
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
        .or_else(|| cookie(headers, TOKEN_COOKIE).map(|t| format!("Bearer {t}")));
    if let Some(v) = bearer.and_then(|b| b.parse().ok()) {
        md.insert("authorization", v);
    }
    md
}

/// The value of cookie `name`, if the request carries it.
fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

impl Dash {
    /// Checks that the caller may do what `need` names.
    fn check(&self, headers: &HeaderMap, need: Need) -> Result<(), Refusal> {
        let req = tonic::Request::from_parts(caller(headers), Default::default(), ());
        authorize(self.auth.as_deref(), &req, need).map_err(Refusal::from)
    }

    /// The members' status, each awaited at most [`STATUS_TIMEOUT`].
    async fn status(&self) -> pb::ClusterStatusResponse {
        crate::api::cluster_status(&self.node, STATUS_TIMEOUT).await
    }

    /// A request for the in-process gRPC service, with the caller's credentials.
    fn request<T>(headers: &HeaderMap, body: T) -> tonic::Request<T> {
        tonic::Request::from_parts(caller(headers), Default::default(), body)
    }
}

async fn api_cluster(State(d): Shared, h: HeaderMap) -> Result<Json<data::ClusterView>, Refusal> {
    d.check(&h, Need::Status)?;
    let status = d.status().await;
    Ok(Json(data::cluster(&d.node, &status)))
}

async fn api_queues(State(d): Shared, h: HeaderMap) -> Result<Json<data::QueuesView>, Refusal> {
    d.check(&h, Need::Status)?;
    let status = d.status().await;
    Ok(Json(data::queues(&d.node, &status)))
}

/// `queue` as a read needs it: empty is every queue.
fn read_on(queue: &str) -> Need<'_> {
    Need::Read((!queue.is_empty()).then_some(queue))
}

async fn api_tasks(
    State(d): Shared,
    h: HeaderMap,
    Query(f): Query<Filter>,
) -> Result<Json<data::TaskPage>, Refusal> {
    d.check(&h, read_on(&f.queue))?;
    data::tasks(&d.node, &f).map(Json).map_err(Refusal::bad)
}

/// Reads one task for a caller allowed to read its queue.
fn task_for(d: &Dash, h: &HeaderMap, id: &str) -> Result<data::TaskDetail, Refusal> {
    d.check(h, Need::GetById)?;
    crate::api::validate::task_id(id)?;
    let t = data::task(&d.node, id, d.trace_url.as_deref()).ok_or_else(|| {
        Refusal::not_found(format!(
            "task {:?} not found",
            crate::api::validate::clip(id)
        ))
    })?;
    d.check(h, Need::Read(Some(&t.row.queue)))?;
    Ok(t)
}

async fn api_task(
    State(d): Shared,
    h: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<data::TaskDetail>, Refusal> {
    task_for(&d, &h, &id).map(Json)
}

#[derive(serde::Deserialize, Default)]
#[serde(default)]
pub struct LeaseQuery {
    pub queue: String,
    pub limit: Option<usize>,
}

async fn api_leases(
    State(d): Shared,
    h: HeaderMap,
    Query(q): Query<LeaseQuery>,
) -> Result<Json<data::LeasesView>, Refusal> {
    d.check(&h, read_on(&q.queue))?;
    Ok(Json(data::leases(
        &d.node,
        &q.queue,
        q.limit.unwrap_or(100),
    )))
}

#[derive(serde::Deserialize, Default)]
#[serde(default)]
pub struct CountQuery {
    pub limit: Option<usize>,
}

async fn api_verdicts(
    State(d): Shared,
    h: HeaderMap,
    Query(q): Query<CountQuery>,
) -> Result<Json<Vec<data::VerdictView>>, Refusal> {
    d.check(&h, Need::Read(None))?;
    let n = q.limit.unwrap_or(50).min(crate::store::VERDICTS_KEPT);
    Ok(Json(data::verdicts(&d.node, n)))
}

#[derive(serde::Deserialize, Default)]
#[serde(default)]
pub struct ActionBody {
    pub reason: String,
}

/// An action must carry [`ACTION_HEADER`]: a form or a script of another site cannot, so a
/// page elsewhere cannot cancel a task through a browser that holds the token cookie.
fn action_allowed(h: &HeaderMap) -> Result<(), Refusal> {
    if h.contains_key(ACTION_HEADER) {
        return Ok(());
    }
    Err(Refusal {
        code: StatusCode::FORBIDDEN,
        grpc: Code::PermissionDenied,
        message: format!(
            "actions must carry the header {ACTION_HEADER}: 1 (the dashboard's script sends it)"
        ),
    })
}

fn reason_of(body: &axum::body::Bytes) -> Result<String, Refusal> {
    if body.is_empty() {
        return Ok(String::new());
    }
    serde_json::from_slice::<ActionBody>(body)
        .map(|b| b.reason)
        .map_err(|e| Refusal::bad(format!("the body is not {{\"reason\": \"…\"}}: {e}")))
}

async fn api_cancel(
    State(d): Shared,
    h: HeaderMap,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> Result<Json<data::TaskRow>, Refusal> {
    action_allowed(&h)?;
    let reason = reason_of(&body)?;
    let reason = if reason.is_empty() {
        "cancelled from the dashboard".to_string()
    } else {
        reason
    };
    let req = Dash::request(&h, pb::CancelTaskRequest { id, reason });
    let r = d.scheduler.cancel_task(req).await?.into_inner();
    Ok(Json(row_of(r.task)))
}

async fn api_retry(
    State(d): Shared,
    h: HeaderMap,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> Result<Json<data::TaskRow>, Refusal> {
    action_allowed(&h)?;
    let reason = reason_of(&body)?;
    let req = Dash::request(&h, pb::RetryTaskRequest { id, reason });
    let r = d.scheduler.retry_task(req).await?.into_inner();
    Ok(Json(row_of(r.task)))
}

/// The list line of a task an action answered with.
fn row_of(t: Option<pb::Task>) -> data::TaskRow {
    let t = t.unwrap_or_default();
    let state = crate::api::convert::state_from_pb(
        pb::TaskState::try_from(t.state).unwrap_or(pb::TaskState::Unspecified),
    );
    data::TaskRow {
        id: t.id,
        queue: t.queue,
        state: state.map(data::state_name).unwrap_or("unknown"),
        attempt: t.attempt,
        failures: 0,
        max_attempts: t.max_attempts,
        created_at_unix_ms: t.created_at_unix_ms,
        updated_at_unix_ms: t.updated_at_unix_ms,
        updated_rev: t.updated_rev,
        worker_id: t.lease.map(|l| l.worker_id),
        error: t.error,
        late_success: t
            .history
            .iter()
            .any(|r| r.late && r.outcome == pb::AttemptOutcome::Succeeded as i32),
    }
}

#[derive(serde::Deserialize)]
struct TokenForm {
    token: String,
}

/// The token form (for browsers without the script): sets the token cookie, then shows the
/// overview.
async fn login(Form(f): Form<TokenForm>) -> Response {
    let token = f.token.trim();
    if token.is_empty()
        || !token
            .bytes()
            .all(|b| b.is_ascii_graphic() && b != b';' && b != b',')
    {
        return (
            StatusCode::BAD_REQUEST,
            "a token is printable ASCII without spaces, ';' or ',': paste the one `leasekeeper auth add` printed",
        )
            .into_response();
    }
    let cookie = format!("{TOKEN_COOKIE}={token}; Path=/; HttpOnly; SameSite=Strict");
    let mut r = Redirect::to("/").into_response();
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        r.headers_mut().insert(header::SET_COOKIE, v);
    }
    r
}

async fn logout(h: HeaderMap) -> Response {
    if let Err(r) = action_allowed(&h) {
        return r.into_response();
    }
    let mut r = StatusCode::NO_CONTENT.into_response();
    r.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_static("leasekeeper_token=; Path=/; Max-Age=0; SameSite=Strict"),
    );
    r
}
