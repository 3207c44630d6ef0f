-- What each logged match answered, and which vote its confidence is (see raiox_core/match.py): under a
-- manufacturer filter the confidence is the leading model's share, so the number alone is ambiguous.
ALTER TABLE match_log ADD COLUMN answer text, ADD COLUMN confidence_of text;
