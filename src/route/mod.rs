//! Route table: compiled from `routes:` at config load, consulted once per request by
//! `request_filter` (through [`crate::gateway::admit`]).
//!
//! Precedence (documented in docs/routing.md):
//! 1. Host: exact host, then the longest matching wildcard (`*.example.com` matches one or more
//!    labels in front of `example.com`), then routes without `hosts`. A less specific host is
//!    consulted only when the more specific one has no route for the path at all.
//! 2. Path: an exact `path` (with or without one trailing slash), then the longest
//!    `path_prefix`, matched on whole segments (`/api` matches `/api` and `/api/x`, never
//!    `/apiv2`).
//! 3. Methods are checked only among the routes that won steps 1 and 2. If none of them allows
//!    the method the answer is 405 with `Allow` — the request never falls through to a less
//!    specific route, so `GET`-only rules on `/admin` cannot be sidestepped with `POST`.

pub mod normalize;

use crate::config::raw::Method;
use crate::upstream::Pool;
use std::sync::Arc;

/// aHash instead of SipHash: route keys come from config, lookups happen on every request, and
/// SipHash showed up at ~1k instructions per request (HashDoS resistance is kept: aHash is
/// randomly keyed per process).
type HashMap<K, V> = std::collections::HashMap<K, V, ahash::RandomState>;

/// A compiled route. Immutable; shared by the router and every request that matched it.
#[derive(Debug)]
pub struct Route {
    pub id: Arc<str>,
    pub pool: Arc<Pool>,
    pub public: bool,
    /// Authenticators, any of which may authenticate the caller (empty iff `public`).
    pub authn: Vec<Arc<crate::auth::Authenticator>>,
    /// `Some(prefix)` when the route has `strip_prefix: true`.
    pub strip_prefix: Option<String>,
    /// Bit set of allowed [`Method`]s.
    pub methods: u8,
    /// `Upgrade: websocket` is allowed (and only that protocol).
    pub websocket: bool,
    /// Authorization policy (named or inline), if any.
    pub policy: Option<Arc<crate::authz::Policy>>,
    /// Policy denials are recorded as `shadow_deny` and let through (route or policy `mode`).
    pub shadow: bool,
    /// Rate-limit policies, all enforced, in the order listed.
    pub rate_limits: Vec<Arc<crate::ratelimit::LimitPolicy>>,
    /// This route's hot metric series, resolved on first use.
    pub metrics: crate::metrics::RouteMetrics,
}

impl Route {
    pub fn allows(&self, m: Method) -> bool {
        self.methods & m.bit() != 0
    }

    /// The path to send upstream for a request that matched this route.
    pub fn upstream_path<'a>(&self, path: &'a str) -> std::borrow::Cow<'a, str> {
        match &self.strip_prefix {
            Some(prefix) if prefix != "/" => {
                let rest = &path[prefix.len().min(path.len())..];
                if rest.is_empty() {
                    "/".into()
                } else {
                    rest.into()
                }
            }
            _ => path.into(),
        }
    }
}

pub const ALL_METHODS: u8 = 0x7f;

/// Outcome of a route lookup.
#[derive(Debug)]
pub enum RouteMatch<'a> {
    Found(&'a Arc<Route>),
    NoRoute,
    /// Carries the bit set of methods that *would* be allowed, for the `Allow` header.
    MethodNotAllowed(u8),
}

/// How a route matches paths.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum PathSpec {
    Exact(String),
    Prefix(String),
}

/// How a route matches hosts.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum HostSpec {
    Any,
    Exact(String),
    /// Stored as the suffix including the leading dot: `*.example.com` → `.example.com`.
    Wildcard(String),
}

#[derive(Default, Debug)]
struct PathTable {
    exact: HashMap<String, Vec<Arc<Route>>>,
    prefix: HashMap<String, Vec<Arc<Route>>>,
}

impl PathTable {
    fn lookup(&self, path: &str) -> Option<&[Arc<Route>]> {
        if !self.exact.is_empty() {
            if let Some(g) = self.exact.get(path) {
                return Some(g);
            }
            if path.len() > 1 {
                if let Some(g) = path.strip_suffix('/').and_then(|p| self.exact.get(p)) {
                    return Some(g);
                }
            }
        }
        if self.prefix.is_empty() {
            return None;
        }
        // Walk back over segment boundaries: /a/b/c → /a/b/c, /a/b, /a, /
        let mut candidate = path.strip_suffix('/').unwrap_or(path);
        loop {
            if candidate.is_empty() {
                return self.prefix.get("/").map(Vec::as_slice);
            }
            if let Some(g) = self.prefix.get(candidate) {
                return Some(g);
            }
            match candidate.rfind('/') {
                Some(i) => candidate = &candidate[..i],
                None => return self.prefix.get("/").map(Vec::as_slice),
            }
        }
    }
}

/// The compiled route table.
#[derive(Default, Debug)]
pub struct Router {
    exact_hosts: HashMap<String, PathTable>,
    wildcard_hosts: HashMap<String, PathTable>,
    any_host: PathTable,
    len: usize,
    /// `server.path_case: insensitive`: route paths are stored lower-case and request paths
    /// are lower-cased (ASCII) for the lookup only; the upstream still gets the path as sent.
    case_insensitive: bool,
}

impl Router {
    /// Add a route for one (host, path) pair. The compiler has already checked that routes in
    /// the same group do not overlap in methods.
    pub fn insert(&mut self, host: &HostSpec, path: &PathSpec, route: Arc<Route>) {
        let table = match host {
            HostSpec::Any => &mut self.any_host,
            HostSpec::Exact(h) => self.exact_hosts.entry(h.clone()).or_default(),
            HostSpec::Wildcard(s) => self.wildcard_hosts.entry(s.clone()).or_default(),
        };
        let group = match path {
            PathSpec::Exact(p) => table.exact.entry(p.clone()).or_default(),
            PathSpec::Prefix(p) => table.prefix.entry(p.clone()).or_default(),
        };
        group.push(route);
        self.len += 1;
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn new(case_insensitive: bool) -> Router {
        Router {
            case_insensitive,
            ..Router::default()
        }
    }

    pub fn case_insensitive(&self) -> bool {
        self.case_insensitive
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Find the route for a normalised host and path. `method` is `None` for methods no route
    /// can allow (TRACE, CONNECT, extension methods).
    pub fn lookup(&self, host: &str, path: &str, method: Option<Method>) -> RouteMatch<'_> {
        let folded;
        let path = if self.case_insensitive && path.bytes().any(|b| b.is_ascii_uppercase()) {
            folded = path.to_ascii_lowercase();
            folded.as_str()
        } else {
            path
        };
        let group = self.group_for(host, path);
        let Some(group) = group else {
            return RouteMatch::NoRoute;
        };
        let mut allow = 0u8;
        for r in group {
            if let Some(m) = method {
                if r.allows(m) {
                    return RouteMatch::Found(r);
                }
            }
            allow |= r.methods;
        }
        RouteMatch::MethodNotAllowed(allow)
    }

    fn group_for(&self, host: &str, path: &str) -> Option<&[Arc<Route>]> {
        if let Some(t) = self.exact_hosts.get(host) {
            if let Some(g) = t.lookup(path) {
                return Some(g);
            }
        }
        if !self.wildcard_hosts.is_empty() {
            // Longest suffix first: for a.b.example.com try .b.example.com, .example.com, .com
            for (i, c) in host.char_indices() {
                if c == '.' {
                    if let Some(t) = self.wildcard_hosts.get(&host[i..]) {
                        if let Some(g) = t.lookup(path) {
                            return Some(g);
                        }
                    }
                }
            }
        }
        self.any_host.lookup(path)
    }
}

/// Render a method bit set for the `Allow` header.
pub fn allow_header(methods: u8) -> String {
    Method::ALL
        .iter()
        .filter(|m| methods & m.bit() != 0)
        .map(|m| m.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::upstream::Pool;

    fn route(id: &str, methods: u8) -> Arc<Route> {
        Arc::new(Route {
            id: id.into(),
            pool: Pool::for_tests("p"),
            public: true,
            authn: Vec::new(),
            strip_prefix: None,
            methods,
            websocket: false,
            policy: None,
            rate_limits: Vec::new(),
            shadow: false,
            metrics: Default::default(),
        })
    }

    fn id(m: RouteMatch<'_>) -> String {
        match m {
            RouteMatch::Found(r) => r.id.to_string(),
            RouteMatch::NoRoute => "404".into(),
            RouteMatch::MethodNotAllowed(a) => format!("405:{}", allow_header(a)),
        }
    }

    #[test]
    fn precedence() {
        let mut r = Router::default();
        let any = HostSpec::Any;
        r.insert(
            &any,
            &PathSpec::Prefix("/".into()),
            route("root", ALL_METHODS),
        );
        r.insert(
            &any,
            &PathSpec::Prefix("/api".into()),
            route("api", ALL_METHODS),
        );
        r.insert(
            &any,
            &PathSpec::Prefix("/api/v1".into()),
            route("v1", ALL_METHODS),
        );
        r.insert(
            &any,
            &PathSpec::Exact("/api/v1/health".into()),
            route("health", ALL_METHODS),
        );
        r.insert(
            &HostSpec::Exact("api.example.com".into()),
            &PathSpec::Prefix("/api".into()),
            route("host-api", ALL_METHODS),
        );
        r.insert(
            &HostSpec::Wildcard(".example.com".into()),
            &PathSpec::Prefix("/api".into()),
            route("wild-api", ALL_METHODS),
        );
        let g = Some(Method::Get);
        assert_eq!(id(r.lookup("x", "/api", g)), "api");
        assert_eq!(id(r.lookup("x", "/api/", g)), "api");
        assert_eq!(id(r.lookup("x", "/apiv2", g)), "root");
        assert_eq!(id(r.lookup("x", "/api/v1/x", g)), "v1");
        assert_eq!(id(r.lookup("x", "/api/v1", g)), "v1");
        assert_eq!(id(r.lookup("x", "/api/v1/health", g)), "health");
        assert_eq!(id(r.lookup("x", "/api/v1/health/", g)), "health");
        assert_eq!(id(r.lookup("x", "/api/v1/healthz", g)), "v1");
        assert_eq!(id(r.lookup("api.example.com", "/api/v1/x", g)), "host-api");
        assert_eq!(id(r.lookup("a.example.com", "/api", g)), "wild-api");
        assert_eq!(id(r.lookup("a.b.example.com", "/api", g)), "wild-api");
        assert_eq!(id(r.lookup("example.com", "/api", g)), "api");
        // host table without a path match falls back to less specific hosts
        assert_eq!(id(r.lookup("api.example.com", "/other", g)), "root");
    }

    #[test]
    fn methods() {
        let mut r = Router::default();
        let p = PathSpec::Prefix("/orders".into());
        r.insert(
            &HostSpec::Any,
            &p,
            route("read", Method::Get.bit() | Method::Head.bit()),
        );
        r.insert(&HostSpec::Any, &p, route("write", Method::Post.bit()));
        r.insert(
            &HostSpec::Any,
            &PathSpec::Prefix("/".into()),
            route("root", ALL_METHODS),
        );
        assert_eq!(id(r.lookup("h", "/orders/1", Some(Method::Get))), "read");
        assert_eq!(id(r.lookup("h", "/orders/1", Some(Method::Post))), "write");
        assert_eq!(
            id(r.lookup("h", "/orders/1", Some(Method::Delete))),
            "405:GET, HEAD, POST"
        );
        assert_eq!(id(r.lookup("h", "/orders/1", None)), "405:GET, HEAD, POST");
    }

    #[test]
    fn case_insensitive_lookup() {
        let mut r = Router::new(true);
        r.insert(
            &HostSpec::Any,
            &PathSpec::Prefix("/admin".into()),
            route("admin", ALL_METHODS),
        );
        let g = Some(Method::Get);
        assert_eq!(id(r.lookup("h", "/ADMIN/x", g)), "admin");
        assert_eq!(id(r.lookup("h", "/aDmIn", g)), "admin");
        let mut s = Router::new(false);
        s.insert(
            &HostSpec::Any,
            &PathSpec::Prefix("/admin".into()),
            route("admin", ALL_METHODS),
        );
        assert_eq!(id(s.lookup("h", "/ADMIN/x", g)), "404");
    }

    #[test]
    fn no_route() {
        let mut r = Router::default();
        r.insert(
            &HostSpec::Any,
            &PathSpec::Exact("/x".into()),
            route("x", ALL_METHODS),
        );
        assert_eq!(id(r.lookup("h", "/y", Some(Method::Get))), "404");
        assert_eq!(id(r.lookup("h", "/", Some(Method::Get))), "404");
        assert_eq!(id(r.lookup("h", "/x/y", Some(Method::Get))), "404");
    }

    #[test]
    fn strip_prefix() {
        let mut rt = Route {
            id: "s".into(),
            pool: Pool::for_tests("p"),
            public: true,
            authn: Vec::new(),
            strip_prefix: Some("/api/v1".into()),
            methods: ALL_METHODS,
            websocket: false,
            policy: None,
            rate_limits: Vec::new(),
            shadow: false,
            metrics: Default::default(),
        };
        assert_eq!(rt.upstream_path("/api/v1/orders"), "/orders");
        assert_eq!(rt.upstream_path("/api/v1"), "/");
        assert_eq!(rt.upstream_path("/api/v1/"), "/");
        rt.strip_prefix = Some("/".into());
        assert_eq!(rt.upstream_path("/a"), "/a");
    }
}
