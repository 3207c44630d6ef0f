-- (manufacturer, model): lets a match learn in two index probes whether the references it searches hold more
-- than one manufacturer or model (Database.label_variety takes their min and max).
CREATE INDEX reference_implants_label_idx ON reference_implants (manufacturer, model);
