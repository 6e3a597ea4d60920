"""`ray-sentiment live`: a page, and the JSON it polls, showing per key the counts and alerts the
stream consumer keeps in Redis, as they change."""
