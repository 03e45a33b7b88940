//! Every path the broker serves, defined once: the route registration, the OpenAPI document and
//! the `route` label of logs and metrics all read this table, so a label is always a known route
//! and never a raw path.

/// A route of the public, backend, admin or `dev` listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Route {
    Token,
    BackendToken,
    ClientJs,
    ClientGlobalJs,
    Healthz,
    Readyz,
    OpenApi,
    Metrics,
    /// The `dev` command's demo pages, all under this prefix.
    Dev,
}

impl Route {
    pub(crate) const ALL: [Route; 9] = [
        Route::Token,
        Route::BackendToken,
        Route::ClientJs,
        Route::ClientGlobalJs,
        Route::Healthz,
        Route::Readyz,
        Route::OpenApi,
        Route::Metrics,
        Route::Dev,
    ];

    pub(crate) const fn path(self) -> &'static str {
        match self {
            Route::Token => "/v1/token",
            Route::BackendToken => "/v1/backend/token",
            Route::ClientJs => "/v1/client.js",
            Route::ClientGlobalJs => "/v1/client.global.js",
            Route::Healthz => "/healthz",
            Route::Readyz => "/readyz",
            Route::OpenApi => "/openapi.json",
            Route::Metrics => "/metrics",
            Route::Dev => "/dev",
        }
    }

    /// Whether a request on this route gets a trace: health checks and scrapes, which arrive
    /// every few seconds and say nothing about a user's request, do not.
    pub(crate) const fn is_traced(self) -> bool {
        !matches!(self, Route::Healthz | Route::Readyz | Route::Metrics)
    }

    /// The route a request path belongs to, if any.
    pub(crate) fn of_path(path: &str) -> Option<Route> {
        Route::ALL.into_iter().find(|route| match route {
            Route::Dev => path
                .strip_prefix(Route::Dev.path())
                .is_some_and(|rest| rest.is_empty() || rest.starts_with('/')),
            route => route.path() == path,
        })
    }

    /// The label of a request's route in logs and metrics: its path, else `other`.
    pub(crate) fn label(route: Option<Route>) -> &'static str {
        route.map_or("other", Route::path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_paths_never_become_labels() {
        assert_eq!(Route::label(Route::of_path("/v1/token")), "/v1/token");
        assert_eq!(
            Route::label(Route::of_path("/v1/token/eyJhbGciOi")),
            "other"
        );
        assert_eq!(Route::label(Route::of_path("/dev/session")), "/dev");
        assert_eq!(Route::label(Route::of_path("/dev")), "/dev");
        assert_eq!(Route::label(Route::of_path("/devious")), "other");
    }

    #[test]
    fn probes_and_scrapes_are_not_traced() {
        let untraced: Vec<Route> = Route::ALL.into_iter().filter(|r| !r.is_traced()).collect();
        assert_eq!(untraced, [Route::Healthz, Route::Readyz, Route::Metrics]);
    }

    #[test]
    fn every_route_is_its_own_label() {
        for route in Route::ALL {
            assert_eq!(Route::of_path(route.path()), Some(route));
        }
    }
}
