-- Diameters as exact decimals: 3.75 is stored, compared and returned as 3.75, never as 3.7499999.
ALTER TABLE reference_implants
    ALTER COLUMN diameter_mm TYPE numeric(4, 2) USING round(diameter_mm::numeric, 2);
