"""Prometheus metrics of one replica, served on their own HTTP port (GARMIN_AUTH_METRICS_LISTEN).

Every replica (Application) has its own CollectorRegistry, so several servers in one process
(the tests) never share or collide on a metric.

RPCs, with go-grpc-prometheus's names and labels so the usual gRPC dashboards work:
  grpc_server_started_total{grpc_type, grpc_service, grpc_method}
  grpc_server_handled_total{grpc_type, grpc_service, grpc_method, grpc_code}
  grpc_server_handling_seconds{grpc_type, grpc_service, grpc_method} (histogram)
recorded by auth_service.api.interceptor for GarminAuthService and for the health service's
unary Check. grpc_code is the status code as go-grpc-prometheus names it ("OK",
"InvalidArgument", "Unavailable", ...), so existing dashboards and alerts match.

The service's own work:
  garmin_auth_lease_grants_total{grpc_method}     LeaseSession / LeaseNextSession that granted
  garmin_auth_lease_takeovers_total               LeaseSession / LeaseNextSession grants that
                                                  replaced an expired, never released lease
  garmin_auth_lease_losses_total{grpc_method}     answers LEASE_LOST
  garmin_auth_upstream_requests_total{endpoint, outcome}
  garmin_auth_upstream_request_seconds{endpoint}  (histogram)
  garmin_auth_refreshes_total{kind, outcome}      refreshes this replica claimed, by session
                                                  kind and outcome (rotated, rejected, ...)
  garmin_auth_refresh_seconds{kind}               Garmin's part of a refresh (histogram)
  garmin_auth_refresh_waits_total{outcome}        refreshes that waited on another's claim
  garmin_auth_rotated_pair_unstored_seconds       how long a new token pair lived only in
                                                  memory before its commit (histogram)
  garmin_auth_sessions{state}                     read from the database at scrape time
  garmin_auth_garth_sessions_active               ACTIVE sessions still on garth's OAuth1,
                                                  to move to DI before those die (ditto)
  garmin_auth_keepalive_lag_seconds               seconds until the soonest refresh-token
                                                  expiry among ACTIVE DI sessions (ditto)
  garmin_auth_di_sessions_expiry_unknown          ACTIVE DI sessions of unknown refresh expiry
  garmin_auth_leases_live                         ditto
  garmin_auth_leases_expired                      leases that expired without being released
  garmin_auth_mfa_challenges_pending              ditto
  garmin_auth_signin_cooldowns_active             accounts waiting out a sign-in cooldown (429)
  garmin_auth_database_metrics_up                 1 when the gauges above could be read
  garmin_auth_callers_file_invalid                1 while the callers file is unusable and
                                                  every caller is refused (auth_service.server)

Modules: `service` (ServiceMetrics: the registry, the RPC, lease and upstream counters),
`database` (the gauges read from the database at scrape time), `endpoint` (the /metrics HTTP
server). Requests to Garmin are timed by garmin_client's transport and reach ServiceMetrics
through auth_service.upstream.observer and the RPC's listener (auth_service.domain.events).
"""
