//! The one assembler: a parsed [`ConfigFile`] becomes a complete generation of the runtime
//! (routes, upstream groups, policies, cache, the listeners' TLS settings and the list of
//! background work), or every problem in the file, each with its key path. `tollgate -t`
//! runs exactly this and binds nothing, so nothing can fail after it said yes; a start and
//! a reload run it too.
//!
//! Each feature builds its own runtime value from its section in one pass
//! (`from_config`); [`refs`] resolves names between sections; [`server`] is the process
//! side. With a `previous` generation, state is carried over by identity: health, breakers
//! and in-flight counts per target (group name and address), rate-limit windows whose
//! definition did not change, the response cache, JWT providers (and their key caches)
//! whose section did not change, the Redis connection.

pub(crate) mod refs;
pub(crate) mod server;

use crate::config::file::{ConfigFile, SecurityHeadersSection};
use crate::config::fingerprint::{carry, Fingerprint, Reloaded};
use crate::config::{FromConfig, Problem};
use crate::gateway::{Gateway, Generation};
use crate::observe::access_log::{self, AccessLog, AccessLogWriter};
use crate::observe::metrics::Metrics;
use crate::observe::trace::{self, Exporter, Tracer};
use crate::policy::external::ExternalAuth;
use crate::policy::jwt::JwtProvider;
use crate::policy::jwt::Providers;
use crate::policy::rate_limit::RateLimitStore;
use crate::policy::GatewayPolicy;
use crate::route::{Route, RouteContext, RouteTable};
use crate::upstream::Groups;
use crate::upstream::UpstreamGroup;
use http::HeaderValue;
use pingora::services::background::BackgroundService;
pub(crate) use server::ServerPlan;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

/// Periodic work of one generation, started when it begins serving and stopped when it
/// retires: health checks, DNS re-resolution, JWKS refreshes.
pub(crate) type Background = (String, Arc<dyn BackgroundService + Send + Sync>);

/// What lives as long as the process, across generations.
pub(crate) struct Shared {
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) draining: Arc<AtomicBool>,
    /// Pooled connections of aggregation parts.
    pub(crate) connector: Arc<pingora::connectors::http::Connector>,
    pub(crate) access_log: Option<AccessLog>,
    pub(crate) tracer: Option<Arc<Tracer>>,
}

/// The background services of [`Shared`]: the access-log writer and the span exporter.
pub(crate) struct Writers {
    pub(crate) access_log: Option<AccessLogWriter>,
    pub(crate) traces: Option<Exporter>,
}

impl Shared {
    /// The process-wide parts, from the first configuration's plan: metrics, the access
    /// log and the tracer (whose writer and exporter the server runs).
    pub(crate) fn new(plan: &ServerPlan) -> Result<(Shared, Writers), Vec<Problem>> {
        let metrics =
            Metrics::new().map_err(|e| vec![Problem::new("", format!("metrics: {e}"))])?;
        let (access_log, writer) = match &plan.access_log {
            None => (None, None),
            Some((target, buffer)) => {
                let (log, writer) = access_log::channel(
                    target.clone(),
                    *buffer,
                    metrics.access_log_dropped.clone(),
                );
                (Some(log), Some(writer))
            }
        };
        let (tracer, traces) = match &plan.tracing {
            None => (None, None),
            Some(settings) => {
                let (t, e) =
                    trace::channel(settings.clone(), metrics.tracing_spans_dropped.clone());
                (Some(Arc::new(t)), Some(e))
            }
        };
        Ok((
            Shared {
                metrics: Arc::new(metrics),
                draining: Arc::new(AtomicBool::new(false)),
                connector: Arc::new(pingora::connectors::http::Connector::new(None)),
                access_log,
                tracer,
            },
            Writers {
                access_log: writer,
                traces,
            },
        ))
    }
}

/// One built configuration.
pub(crate) struct Runtime {
    pub gateway: Gateway,
    pub plan: ServerPlan,
    pub background: Vec<Background>,
}

/// The server plan of a file and the problems found making it: made once per start, `-t`
/// or reload (it reads the certificates), then given to [`Shared::new`] and [`build`].
pub(crate) struct Planned {
    pub plan: ServerPlan,
    problems: Vec<Problem>,
}

impl Planned {
    pub(crate) fn of(file: &ConfigFile) -> Planned {
        let mut problems = Vec::new();
        let plan = server::plan(file, &mut problems);
        Planned { plan, problems }
    }
}

/// Build `file` (whose text has SHA-256 `sha256`, planned as `planned`) into a runtime,
/// carrying state over from `previous` when given; every problem in the file is reported at
/// once.
pub(crate) fn build(
    file: &ConfigFile,
    planned: Planned,
    sha256: &str,
    shared: &Shared,
    previous: Option<&Gateway>,
) -> Result<Runtime, Vec<Problem>> {
    let ConfigFile {
        server: _,
        listeners: _,
        admin: _,
        access_log,
        log: _,
        tracing: _,
        upstreams,
        routes,
        demo: _,
        limits,
        auth,
        consumers,
        rate_limit,
        security_headers,
        resolver,
        cache,
        // The published document: `Described` below.
        openapi: _,
        // Gateway-wide windows: `GatewayPolicy`.
        rate_limits: _,
    } = file;
    let mut problems = Vec::new();
    refs::duplicates(file, &mut problems);
    refs::listen_conflicts(file, &mut problems);
    let access_format =
        access_log::Format::from_config("access_log", access_log, &(), &mut problems)
            .unwrap_or_default();
    let Planned {
        plan,
        problems: plan_problems,
    } = planned;
    problems.extend(plan_problems);
    let security = security(security_headers, &mut problems);
    // The routing table and the OpenAPI document, before the routes: request validation
    // compiles each route's operations from the document.
    let described = crate::describe::Described::from_config("", file, &(), &mut problems);

    let mut providers = Providers::new("JWT provider", auth.jwt.keys().cloned());
    for (name, section) in &auth.jwt {
        let at = format!("auth.jwt.{name}");
        crate::names::check_name(&at, "provider", name, &mut problems);
        // An unchanged provider (section and key files) keeps its verified-token cache and
        // fetched keys.
        let fingerprint = Fingerprint::of(section, section.files());
        match carry(previous.and_then(|g| g.providers.find(name)), fingerprint) {
            Some(p) => providers.insert(name, p.clone()),
            None => {
                if let Some(mut p) = JwtProvider::from_config(&at, section, name, &mut problems) {
                    p.set_fingerprint(fingerprint);
                    providers.insert(name, Arc::new(p));
                }
            }
        }
    }
    let store_cx = Reloaded {
        previous: previous.map(|g| &g.policy.rate_store),
        with: shared.metrics.rate_limit_store(),
    };
    let rate_store =
        Arc::<RateLimitStore>::from_config("rate_limit", rate_limit, &store_cx, &mut problems);

    let hosts_file = resolver.hosts_file.as_ref().map(std::path::PathBuf::from);
    if resolver.hosts_file.as_deref() == Some("") {
        problems.push(Problem::new("resolver.hosts_file", "must not be empty"));
    }
    let resolver = crate::upstream::discovery::dns::Resolver::from_config(
        "resolver",
        resolver,
        &(),
        &mut problems,
    )
    .map(Arc::new);
    let mut groups = Groups::new("upstream", upstreams.keys().cloned());
    let names = crate::upstream::Names {
        hosts_file,
        resolver,
    };
    for (name, section) in upstreams {
        let cx = crate::upstream::GroupContext {
            name,
            names: &names,
            previous: previous.and_then(|g| g.groups.find(name)).map(Arc::as_ref),
        };
        let at = format!("upstreams.{name}");
        if let Some(g) = UpstreamGroup::from_config(&at, section, &cx, &mut problems) {
            groups.insert(name, Arc::new(g));
        }
    }

    let external_cx = crate::policy::external::ExternalContext {
        groups: &groups,
        connector: &shared.connector,
        decisions: &shared.metrics.auth_decisions,
    };
    let previous_external = |name: &str, kind: &str| {
        previous.and_then(|g| {
            g.policy
                .external
                .iter()
                .find(|s| &*s.name == name && s.kind_name() == kind)
        })
    };
    let mut forward = crate::policy::external::Services::new(
        "forward-auth service",
        auth.forward.keys().cloned(),
    );
    for (name, section) in &auth.forward {
        crate::names::check_name(
            &format!("auth.forward.{name}"),
            "service",
            name,
            &mut problems,
        );
        let prev = previous_external(name, "forward");
        if let Some(s) = ExternalAuth::forward(name, section, &external_cx, prev, &mut problems) {
            forward.insert(name, s);
        }
    }
    let mut introspection = crate::policy::external::Services::new(
        "introspection endpoint",
        auth.introspection.keys().cloned(),
    );
    for (name, section) in &auth.introspection {
        let at = format!("auth.introspection.{name}");
        crate::names::check_name(&at, "endpoint", name, &mut problems);
        let prev = previous_external(name, "introspection");
        if let Some(s) =
            ExternalAuth::introspection(name, section, &external_cx, prev, &mut problems)
        {
            introspection.insert(name, s);
        }
    }
    let external: Vec<Arc<ExternalAuth>> =
        forward.all().chain(introspection.all()).cloned().collect();

    let Some(rate_store) = rate_store else {
        return Err(problems);
    };
    let listener_underscores = plan
        .listeners
        .iter()
        .filter_map(|l| Some((l.address.parse().ok()?, l.underscores?)))
        .collect();
    let policy_cx = crate::policy::GatewayContext {
        rate_store: &rate_store,
        services: crate::policy::AuthServices {
            jwt: &providers,
            external,
        },
        listener_underscores,
    };
    let policy = GatewayPolicy::from_config("", file, &policy_cx, &mut problems);
    let cx = RouteContext {
        groups: &groups,
        policy: crate::policy::PolicyContext {
            jwt: &providers,
            forward: &forward,
            introspection: &introspection,
            has_consumers: !consumers.is_empty(),
            rate_store: &rate_store,
            default_max_body: limits.max_body_size.0,
            openapi: described.as_ref().map(|d| &d.openapi),
        },
        security: &security,
    };
    let built_routes: Vec<Route> = routes
        .iter()
        .enumerate()
        .filter_map(|(i, r)| {
            Route::from_config(&format!("routes[{i}]"), r, &cx, &mut problems)
                .map(|route| route.at_position(i))
        })
        .collect();
    let caches = routes.iter().any(|r| r.cache.is_some());
    let response_cache = if caches {
        let cx = Reloaded {
            previous: previous.and_then(|g| g.cache.as_ref()),
            with: shared.metrics.shared_cache(),
        };
        Arc::<crate::cache::ResponseCache>::from_config("cache", cache, &cx, &mut problems)
    } else {
        None
    };
    let request_id_header = request_id_header(file, &mut problems);
    let (Some(policy), Some(described), true) = (policy, described, problems.is_empty()) else {
        return Err(problems);
    };

    let mut background: Vec<Background> = groups.all().flat_map(|g| g.background()).collect();
    if let Some(sub) = response_cache.as_ref().and_then(|c| c.subscriber()) {
        background.push(("cache purge subscriber".into(), sub));
    }
    if let Some(fleet) = policy.rate_store.fleet() {
        background.push((
            "rate-limit sync".into(),
            Arc::new(crate::policy::fleet::Sync(fleet.clone())),
        ));
    }
    for p in providers.all() {
        if let Some(refresher) = p.refresher() {
            background.push((format!("JWKS refresh of {}", p.name), Arc::new(refresher)));
        }
    }
    let gateway = Gateway {
        routes: RouteTable::new(built_routes),
        upstreams: groups.all().cloned().collect(),
        groups,
        providers,
        metrics: shared.metrics.clone(),
        access_log: shared.access_log.clone(),
        access_format,
        tracer: shared.tracer.clone(),
        policy,
        connector: shared.connector.clone(),
        draining: shared.draining.clone(),
        request_id_header,
        described,
        cache: response_cache,
        generation: Generation {
            number: previous.map_or(1, |g| g.generation.number + 1),
            sha256: sha256.to_string(),
            loaded_at: std::time::SystemTime::now(),
        },
        listener_certs: plan
            .listeners
            .iter()
            .map(|l| l.tls.as_ref().map(|t| t.certs.clone()))
            .collect(),
        connection_limits: plan.connection_limits.clone(),
        alt_svc: plan
            .listeners
            .iter()
            .filter_map(|l| {
                let q = l.quic.as_ref()?;
                Some((q.address, q.alt_svc.clone()?))
            })
            .collect(),
    };
    Ok(Runtime {
        gateway,
        plan,
        background,
    })
}

/// `[security_headers]`: the defaults added to responses that lack them.
fn security(
    s: &SecurityHeadersSection,
    problems: &mut Vec<Problem>,
) -> Vec<(pingora::http::SpelledName, HeaderValue)> {
    let SecurityHeadersSection { enabled, hsts } = s;
    let hsts = hsts
        .as_ref()
        .and_then(|h| h.get("security_headers.hsts", problems).cloned());
    if *enabled {
        crate::transform::security_headers(hsts.as_ref())
    } else {
        Vec::new()
    }
}

/// A configuration file, loaded and built: what `tollgate -t` checks and a start runs.
pub struct Assembled {
    /// The file as read.
    pub file: crate::config::ConfigFile,
    /// What is valid but probably not meant (see `refs::warnings`).
    pub warnings: Vec<crate::config::Problem>,
    pub(crate) runtime: Runtime,
    pub(crate) shared: Shared,
    pub(crate) writers: Writers,
}

/// Load and build `path`, reporting every problem in it.
pub fn load(path: &std::path::Path) -> Result<Assembled, crate::config::ConfigError> {
    let (file, source) = crate::config::load(path)?;
    let sha256 = &source.sha256;
    let fail = |mut problems: Vec<crate::config::Problem>| {
        source.locate(&mut problems);
        crate::config::ConfigError {
            file: path.to_path_buf(),
            problems,
        }
    };
    // The process-wide parts come from the plan, made once; `build` reports its problems
    // with the rest.
    let planned = Planned::of(&file);
    let (shared, writers) = Shared::new(&planned.plan).map_err(fail)?;
    let runtime = build(&file, planned, sha256, &shared, None).map_err(fail)?;
    Ok(Assembled {
        warnings: refs::warnings(&file),
        file,
        runtime,
        shared,
        writers,
    })
}

/// The routing table of `assembled` (`tollgate routes`): an aligned text table, or with
/// `json` the document the admin listener's `GET /routes` answers.
pub fn routes(assembled: &Assembled, json: bool) -> String {
    let described = &assembled.runtime.gateway.described;
    if json {
        described.routes_json().to_string()
    } else {
        described.routes_text()
    }
}

/// The OpenAPI 3.1 document of `assembled` (`tollgate openapi`, `GET /openapi.json`).
pub fn openapi(assembled: &Assembled) -> String {
    assembled
        .runtime
        .gateway
        .described
        .openapi_json()
        .to_string()
}

/// What the gateway built from `assembled` would do with one request (`tollgate explain`),
/// without any network.
pub fn explain(
    assembled: &Assembled,
    query: &crate::gateway::explain::Query,
) -> Result<crate::gateway::explain::Explanation, String> {
    let listeners: Vec<_> = assembled
        .runtime
        .plan
        .listeners
        .iter()
        .map(|l| crate::gateway::explain::ListenerFacts {
            address: l.address.clone(),
            tls: l.tls.is_some(),
            http3: l.quic.is_some(),
        })
        .collect();
    crate::gateway::explain::explain(&assembled.runtime.gateway, &listeners, query)
}

/// `[server] request_id_header`, or `X-Request-ID`.
fn request_id_header(
    file: &ConfigFile,
    problems: &mut Vec<Problem>,
) -> &'static pingora::http::SpelledName {
    let at = "server.request_id_header";
    let default = &crate::forward::DEFAULT_REQUEST_ID_HEADER;
    let Some(name) = &file.server.request_id_header else {
        return default;
    };
    if name.get(at, problems).is_none() {
        return default;
    }
    crate::forward::request_id_header(name.text()).unwrap_or_else(|e| {
        problems.push(Problem::new(at, e));
        default
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_defaults_are_in_range() {
        // Every optional section present, every numeric key left to its default.
        let text = r#"
[[listeners]]
address = "127.0.0.1:1"
[upstreams.u]
targets = [{ address = "127.0.0.1:2" }]
[upstreams.u.health_check]
[upstreams.u.circuit_breaker]
[upstreams.u.fallback]
[auth.jwt.j]
algorithms = ["RS256"]
jwks_url = "https://idp.example/jwks"
[[routes]]
name = "r"
path_prefix = "/r"
upstream = "u"
[routes.cache]
ttl = "1s"
[[routes]]
name = "a"
path_prefix = "/a"
[routes.aggregate]
parts = [{ name = "p", upstream = "u", path = "/" }]
[[routes]]
name = "d"
[routes.respond]
"#;
        let file = crate::config::parse(text).unwrap();
        let planned = Planned::of(&file);
        let (shared, _) = Shared::new(&planned.plan).unwrap();
        let built = build(&file, planned, "", &shared, None);
        assert!(built.is_ok(), "{:?}", built.err());
    }

    /// Through the assembler: `tollgate -t` refuses a route whose file is missing.
    #[test]
    fn the_assembler_refuses_a_missing_file() {
        let file = crate::config::parse(
            r#"
[[listeners]]
address = "127.0.0.1:1"
[upstreams.u]
targets = [{ address = "127.0.0.1:2" }]
[[routes]]
name = "r"
path_prefix = "/r"
upstream = "u"
openapi = "/nonexistent/tollgate-test/orders.yaml"
"#,
        )
        .unwrap();
        let planned = Planned::of(&file);
        let (shared, _) = Shared::new(&planned.plan).unwrap();
        let Err(problems) = build(&file, planned, "", &shared, None) else {
            panic!("built with a missing service file");
        };
        assert!(
            problems.iter().any(|p| p.path == "routes[0].openapi"),
            "{problems:?}"
        );
    }
}
