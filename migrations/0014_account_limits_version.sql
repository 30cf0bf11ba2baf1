-- A number that changes whenever what an account's limits are computed from
-- (its tier and its overrides) changes, whichever statement changed it: an
-- instance that remembers a limit it computed compares this integer instead
-- of the inputs themselves on every API-key request.
ALTER TABLE accounts ADD COLUMN limits_version int8 NOT NULL DEFAULT 0;

CREATE FUNCTION accounts_bump_limits_version() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    NEW.limits_version := OLD.limits_version + 1;
    RETURN NEW;
END;
$$;

CREATE TRIGGER accounts_limits_version
    BEFORE UPDATE OF tier, custom_limits ON accounts
    FOR EACH ROW
    WHEN (OLD.tier IS DISTINCT FROM NEW.tier OR OLD.custom_limits IS DISTINCT FROM NEW.custom_limits)
    EXECUTE FUNCTION accounts_bump_limits_version();
