-- completions.lua: wrk script for non-streamed POST /v1/completions with short outputs, to
-- measure per-request overhead (parsing, admission, keep-alive churn) rather than generation.
--   wrk -t2 -c64 -d10s -s bench/wrk/completions.lua http://127.0.0.1:8080
-- Environment: GPTD_API_KEY (optional), GPTD_MAX_TOKENS (default 1).
wrk.method = "POST"
wrk.path = "/v1/completions"
wrk.headers["Content-Type"] = "application/json"
local key = os.getenv("GPTD_API_KEY")
if key ~= nil and key ~= "" then
  wrk.headers["Authorization"] = "Bearer " .. key
end
local max_tokens = tonumber(os.getenv("GPTD_MAX_TOKENS") or "1")
wrk.body = string.format(
  '{"prompt": "The quick brown fox", "max_tokens": %d, "temperature": 0}', max_tokens)

-- wrk itself reports "Non-2xx or 3xx responses" in its summary when there are any.
