"""A column whose unit does not convert to the one the package reads it in is named, with the unit expected."""

from __future__ import annotations

import pytest
from astropy import units as u
from astropy.table import QTable, Table

import gaia_distances as gd
from gaia_distances.cluster.stars import select_stars
from gaia_distances.columns import InvalidTableError, column_values


@pytest.mark.parametrize(
    ("column", "unit", "expected"),
    [
        ("pmra", u.mas, "mas / yr"),
        ("pmdec_error", u.mas, "mas / yr"),
        ("parallax", u.km, "mas"),
        ("ra", u.mas / u.yr, "deg"),
    ],
)
def test_a_column_in_a_unit_that_does_not_convert_is_named(column, unit, expected):
    t = Table(gd.simulate_field(100, n_cluster=50, seed=1))
    t[column].unit = unit
    with pytest.raises(InvalidTableError, match=f"column '{column}' has unit '{unit}'.*give {column} in {expected}"):
        select_stars(t, zero_point="parallax_zeropoint_true", kinematics=True, perspective=True)


def test_convertible_and_unitless_columns_are_read_in_the_package_units():
    t = QTable({"pmra": [1.0] * u.arcsec / u.yr, "radial_velocity": [5.0]})
    assert column_values(t, "pmra", u.mas / u.yr)[0] == pytest.approx(1000.0)
    assert column_values(t, "radial_velocity", u.km / u.s)[0] == 5.0
    t["radial_velocity"].unit = u.mas
    with pytest.raises(
        InvalidTableError, match="column 'radial_velocity' has unit 'mas'.*give radial_velocity in km / s"
    ):
        column_values(t, "radial_velocity", u.km / u.s)
    with pytest.raises(InvalidTableError, match="'parallax_error' has unit 'dex'"):
        column_values(Table({"parallax_error": [1.0]}, units={"parallax_error": "dex"}), "parallax_error", u.mas)
