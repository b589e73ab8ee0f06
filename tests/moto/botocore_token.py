"""Prints the EKS token botocore makes for fixed inputs, the way `aws eks get-token` does.

Usage: botocore_token.py CLUSTER REGION ACCESS_KEY SECRET_KEY SESSION_TOKEN|- UNIX_SECONDS

The token test compares eks-remedy's token with this one, byte for byte. Nothing is sent:
the URL is only presigned, with the clock frozen at UNIX_SECONDS.
"""

import base64
import datetime
import sys

import botocore.auth
import botocore.session


def main():
    cluster, region, access_key, secret_key, session_token, seconds = sys.argv[1:7]
    frozen = datetime.datetime.fromtimestamp(int(seconds), datetime.timezone.utc)
    botocore.auth.get_current_datetime = lambda remove_tzinfo=True: (
        frozen.replace(tzinfo=None) if remove_tzinfo else frozen
    )

    session = botocore.session.get_session()
    client = session.create_client(
        "sts",
        region_name=region,
        aws_access_key_id=access_key,
        aws_secret_access_key=secret_key,
        aws_session_token=None if session_token == "-" else session_token,
        endpoint_url=f"https://sts.{region}.amazonaws.com",
    )

    def add_cluster_header(request, **_kwargs):
        request.headers["x-k8s-aws-id"] = cluster

    client.meta.events.register("before-sign.sts.GetCallerIdentity", add_cluster_header)
    url = client.generate_presigned_url(
        "get_caller_identity", Params={}, ExpiresIn=60, HttpMethod="GET"
    )
    encoded = base64.urlsafe_b64encode(url.encode()).decode().rstrip("=")
    print(f"k8s-aws-v1.{encoded}")


if __name__ == "__main__":
    main()
