wrk.headers["Authorization"] = "Token bench-license-key"
wrk.path = "/api/v1/agent/version"
