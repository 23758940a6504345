-- The exact datastore write each stock step last started (`{"attempt", "value",
-- "if_version"}`), recorded with its attempt number before it is sent. A run that finds an attempt whose
-- outcome it never saw sends that same request again under the same Idempotency-Key:
-- the datastore replays it if it applied, and applies it now (once) or refuses it (409)
-- if it never arrived. The datastore refuses a key reused for another request, so
-- asking with anything but the identical request cannot tell.
-- Expand only: a previous version leaves these as they were (its attempts are newer than
-- the request recorded, which the attempt number inside tells).
ALTER TABLE reservations
    ADD COLUMN reserve_request jsonb,
    ADD COLUMN release_request jsonb;
