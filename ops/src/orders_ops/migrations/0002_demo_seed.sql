-- Demo catalogue and stock. Tests create their own SKUs so they never
-- depend on (or drain) these.
INSERT INTO app.products (sku, name, unit_price_cents) VALUES
    ('WIDGET-1', 'Widget', 1250),
    ('GADGET-2', 'Gadget', 4999),
    ('GIZMO-3', 'Gizmo', 899),
    ('RARE-4', 'Rare collectible (never in stock)', 99000)
ON CONFLICT (sku) DO NOTHING;

INSERT INTO app.inventory (sku, on_hand) VALUES
    ('WIDGET-1', 1000),
    ('GADGET-2', 500),
    ('GIZMO-3', 1000),
    ('RARE-4', 0)
ON CONFLICT (sku) DO NOTHING;
