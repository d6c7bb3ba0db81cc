-- The W3C traceparent of the request that queued a job (the API's request span), for the runner to continue its
-- trace; NULL for jobs queued outside a request (timers) or before this column.
ALTER TABLE jobs ADD COLUMN traceparent TEXT;
