"""The shared model's port numbers and the kernel rules' numbers are the same ports."""

from ketch import mesh
from ketch.netns import constants


def test_ports_agree_with_the_redirection_rules() -> None:
    assert mesh.OUTBOUND_PORT == constants.OUTBOUND_PORT == 15001
    assert mesh.INBOUND_PLAINTEXT_PORT == constants.INBOUND_PLAINTEXT_PORT == 15006
    assert mesh.HBONE_PORT == constants.HBONE_PORT == 15008
    assert mesh.SELF_PORTS == constants.PROXY_PORTS
