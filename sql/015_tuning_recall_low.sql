-- The lower end of the 95% confidence interval of the recall the probe measured at its chosen ef_search: the
-- probe now chooses by it. A tuning without it was chosen by the point estimate alone, so it is stale.
ALTER TABLE search_tuning ADD COLUMN recall_low real;
