"""Real-world command lines, secret and harmless, with the exact argv expected after redaction.

Counts (asserted by tests/unit/test_redact_corpus.py): 187 lines; 133 with a secret, of which
133 are caught (all the 42 forms issue 14 found leaking among them); 54 harmless, of which 0 are
altered.

Each entry is (argv, expected). `expected is None` marks a harmless line: it must come through
unchanged. Secret values below are fakes in the vendors' documented shapes.
"""

# ruff: noqa: E501 - one line per command line reads best
from __future__ import annotations

R = "<redacted>"
GHP = "ghp_" + "A1b2C3d4E5f6G7h8I9j0K1l2M3n4O5p6Q7r8"
GHO = "gho_" + "Z" * 36
GHS = "ghs_" + "x1" * 18
GHU = "ghu_" + "Q" * 36
GHR = "ghr_" + "r9" * 18
GPAT = "github_pat_11ABCDEFG0" + "a" * 60
GLPAT = "glpat-" + "xYz12_AbC-9876543210"
XOXB = "xoxb-1234567890-1234567890123-AbCdEfGhIjKlMnOpQrStUvWx"
XOXP = "xoxp-1234567890-1234567890-1234567890-abcdef0123456789abcdef0123456789"
SK_LIVE = "sk_live_" + "4eC39HqLyjWDarjtT1zdp7dc"
RK_LIVE = "rk_live_" + "51H8abcdEFGH1234ijkl"
AIZA = "AIza" + "SyA-1234567890abcdefghijklmnopqrstu"
HVS = "hvs." + "CAESIJ7xYz0123456789abcdefghijklmnop"
AKIA = "AKIAIOSFODNN7EXAMPLE"
AWS_SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
JWT = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.c2lnbmF0dXJl"
OPENAI = "sk-proj-" + "abcDEF123456ghiJKL789mnoPQR"
NPM = "npm_" + "a1B2" * 9
PYPI = "pypi-AgEIcHlwaS5vcmc" + "B" * 50
SENDGRID = "SG." + "a" * 22 + "." + "b" * 43
DOP = "dop_v1_" + "0a" * 32
SHPAT = "shpat_" + "0123456789abcdef" * 2
HF = "hf_" + "AbCdEfGhIjKlMnOpQrStUvWxYzAbCdEfGh"
DCKR = "dckr_pat_" + "A" * 27
PEM = "-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEA7\n-----END RSA PRIVATE KEY-----"
PEM_R = f"-----BEGIN RSA PRIVATE KEY-----{R}-----END RSA PRIVATE KEY-----"

CORPUS: list[tuple[list[str], list[str] | None]] = [
    # --- attached or short options, keyed on the program --------------------------------------
    (["mysql", "-uroot", "-pSECRET", "shop"], ["mysql", "-uroot", f"-p{R}", "shop"]),
    (["/usr/bin/mysqldump", "-u", "bk", "-pS3cr#t", "db"], ["/usr/bin/mysqldump", "-u", "bk", f"-p{R}", "db"]),
    (["mysqladmin", "-pSECRET", "status"], ["mysqladmin", f"-p{R}", "status"]),
    (["mariadb", "-h", "db", "-pSECRET"], ["mariadb", "-h", "db", f"-p{R}"]),
    (["sudo", "-u", "mysql", "mysql", "-pSECRET"], ["sudo", "-u", "mysql", "mysql", f"-p{R}"]),
    (["env", "LANG=C", "mysql", "-pSECRET"], ["env", "LANG=C", "mysql", f"-p{R}"]),
    (["exec", "mysql", "-pSECRET"], ["exec", "mysql", f"-p{R}"]),
    (["sh", "-c", "mysql -pSECRET -h db shop"], ["sh", "-c", f"mysql -p{R} -h db shop"]),
    (["bash", "-lc", "cd /srv && mysql -u app -pSECRET app < dump.sql"], ["bash", "-lc", f"cd /srv && mysql -u app -p{R} app < dump.sql"]),
    (["sshpass", "-p", "SECRET", "ssh", "host"], ["sshpass", "-p", R, "ssh", "host"]),
    (["sshpass", "-pSECRET", "scp", "a", "host:"], ["sshpass", f"-p{R}", "scp", "a", "host:"]),
    (["redis-cli", "-h", "cache", "-a", "SECRET", "ping"], ["redis-cli", "-h", "cache", "-a", R, "ping"]),
    (["docker", "login", "-u", "bob", "-p", "SECRET", "registry.example"], ["docker", "login", "-u", "bob", "-p", R, "registry.example"]),
    (["podman", "login", "-pSECRET", "quay.io"], ["podman", "login", f"-p{R}", "quay.io"]),
    (["helm", "registry", "login", "-u", "x", "-p", "SECRET", "ghcr.io"], ["helm", "registry", "login", "-u", "x", "-p", R, "ghcr.io"]),
    (["ldapsearch", "-x", "-D", "cn=admin", "-w", "SECRET", "-b", "dc=x"], ["ldapsearch", "-x", "-D", "cn=admin", "-w", R, "-b", "dc=x"]),
    (["ldapadd", "-wSECRET", "-f", "a.ldif"], ["ldapadd", f"-w{R}", "-f", "a.ldif"]),
    (["sqlcmd", "-S", "db", "-U", "sa", "-P", "SECRET"], ["sqlcmd", "-S", "db", "-U", "sa", "-P", R]),
    (["bcp", "t", "out", "f", "-U", "sa", "-PSECRET"], ["bcp", "t", "out", "f", "-U", "sa", f"-P{R}"]),
    (["openssl", "pkcs12", "-in", "a.p12", "-passin", "pass:SECRET"], ["openssl", "pkcs12", "-in", "a.p12", "-passin", f"pass:{R}"]),
    (["openssl", "rsa", "-passout", "pass:SECRET", "-out", "k"], ["openssl", "rsa", "-passout", f"pass:{R}", "-out", "k"]),
    (["openssl", "enc", "-aes-256-cbc", "-k", "SECRET", "-in", "f"], ["openssl", "enc", "-aes-256-cbc", "-k", R, "-in", "f"]),
    (["openssl", "pkcs12", "-export", "-password", "pass:SECRET"], ["openssl", "pkcs12", "-export", "-password", f"pass:{R}"]),
    (["keytool", "-importcert", "-keystore", "k.jks", "-storepass", "SECRET"], ["keytool", "-importcert", "-keystore", "k.jks", "-storepass", R]),
    (["keytool", "-genkey", "-keypass", "SECRET", "-storepass", "OTHER"], ["keytool", "-genkey", "-keypass", R, "-storepass", R]),
    (["keytool", "-storepasswd", "-new", "SECRET", "-storepass", "OLD"], ["keytool", "-storepasswd", "-new", R, "-storepass", R]),
    (["jarsigner", "-storepass", "SECRET", "app.jar", "alias"], ["jarsigner", "-storepass", R, "app.jar", "alias"]),
    (["gpg", "--batch", "--passphrase", "SECRET", "-d", "f.gpg"], ["gpg", "--batch", "--passphrase", R, "-d", "f.gpg"]),
    (["mongosh", "-u", "admin", "-p", "SECRET", "--authenticationDatabase", "admin"], ["mongosh", "-u", "admin", "-p", R, "--authenticationDatabase", "admin"]),
    (["mongodump", "-pSECRET"], ["mongodump", f"-p{R}"]),
    (["zip", "-P", "SECRET", "out.zip", "f"], ["zip", "-P", R, "out.zip", "f"]),
    (["7z", "x", "-pSECRET", "a.7z"], ["7z", "x", f"-p{R}", "a.7z"]),
    (["mosquitto_pub", "-h", "bus", "-u", "agent", "-P", "SECRET", "-t", "x", "-m", "1"], ["mosquitto_pub", "-h", "bus", "-u", "agent", "-P", R, "-t", "x", "-m", "1"]),
    (["htpasswd", "-bc", "/etc/nginx/.htpasswd", "bob", "SECRET"], ["htpasswd", "-bc", "/etc/nginx/.htpasswd", "bob", R]),
    (["useradd", "-m", "-p", "$6$saltsalt$hash", "bob"], ["useradd", "-m", "-p", R, "bob"]),
    (["vault", "login", "s.SECRET"], ["vault", "login", R]),
    (["nmcli", "dev", "wifi", "connect", "Home", "password", "SECRET"], ["nmcli", "dev", "wifi", "connect", "Home", "password", R]),
    (["doctl", "auth", "init", "-t", "SECRET"], ["doctl", "auth", "init", "-t", R]),
    (["sqlplus", "scott/SECRET@orcl", "@run.sql"], ["sqlplus", f"scott/{R}@orcl", "@run.sql"]),
    (["sqlplus", "-s", "system/SECRET"], ["sqlplus", "-s", f"system/{R}"]),
    (["lftp", "-u", "bob,SECRET", "ftp.example"], ["lftp", "-u", f"bob,{R}", "ftp.example"]),
    # --- user:password options -------------------------------------------------------------------
    (["curl", "-u", "user:SECRET", "https://x/"], ["curl", "-u", f"user:{R}", "https://x/"]),
    (["curl", "--user=user:SECRET", "https://x/"], ["curl", f"--user=user:{R}", "https://x/"]),
    (["curl", "-uuser:SECRET", "https://x/"], ["curl", f"-uuser:{R}", "https://x/"]),
    (["curl", "--proxy-user", "p:SECRET", "https://x/"], ["curl", "--proxy-user", f"p:{R}", "https://x/"]),
    (["wget", "--user", "u:SECRET", "https://x/f"], ["wget", "--user", f"u:{R}", "https://x/f"]),
    (["smbclient", "//srv/share", "-U", "user%SECRET"], ["smbclient", "//srv/share", "-U", f"user%{R}"]),
    (["smbclient", "-L", "srv", "--user=dom/u%SECRET"], ["smbclient", "-L", "srv", f"--user=dom/u%{R}"]),
    # --- long options beyond --password ----------------------------------------------------------
    (["app", "--db-password", "SECRET"], ["app", "--db-password", R]),
    (["openstack", "--os-password", "SECRET", "server", "list"], ["openstack", "--os-password", R, "server", "list"]),
    (["cli", "--auth-token", "SECRET", "get"], ["cli", "--auth-token", R, "get"]),
    (["java", "-jar", "tool.jar", "-password", "SECRET"], ["java", "-jar", "tool.jar", "-password", R]),
    (["aws", "configure", "set", "aws_secret_access_key", AWS_SECRET], ["aws", "configure", "set", "aws_secret_access_key", R]),
    (["aws", "--secret-access-key", "SECRET", "s3", "ls"], ["aws", "--secret-access-key", R, "s3", "ls"]),
    (["ansible-playbook", "site.yml", "-e", "ansible_become_pass=SECRET"], ["ansible-playbook", "site.yml", "-e", f"ansible_become_pass={R}"]),
    (["curl", "--oauth2-bearer", "SECRET", "https://x/"], ["curl", "--oauth2-bearer", R, "https://x/"]),
    (["app", "--client-secret=SECRET", "--client-id=abc"], ["app", f"--client-secret={R}", "--client-id=abc"]),
    (["az", "storage", "blob", "list", "--account-key", "SECRET"], ["az", "storage", "blob", "list", "--account-key", R]),
    (["app", "--api-key=SECRET"], ["app", f"--api-key={R}"]),
    (["wget", "--http-password=SECRET", "https://x/"], ["wget", f"--http-password={R}", "https://x/"]),
    (["app", "--password=my secret phrase"], ["app", f"--password={R}"]),
    (["rabbitmqctl", "add_user", "bob", "--bearer", "SECRET"], ["rabbitmqctl", "add_user", "bob", "--bearer", R]),
    (["vault", "write", "auth/approle/login", "role_id=abc", "secret_id=SECRET"], ["vault", "write", "auth/approle/login", "role_id=abc", f"secret_id={R}"]),
    (["gh", "secret", "set", "X", "--body", "v", "--token", "SECRET"], ["gh", "secret", "set", "X", "--body", "v", "--token", R]),
    # --- environment and key=value --------------------------------------------------------------
    (["env", "PGPASSWORD=SECRET", "psql", "-h", "db"], ["env", f"PGPASSWORD={R}", "psql", "-h", "db"]),
    (["docker", "run", "-e", "MYSQL_ROOT_PASSWORD=SECRET", "mysql:8"], ["docker", "run", "-e", f"MYSQL_ROOT_PASSWORD={R}", "mysql:8"]),
    (["env", "REDISCLI_AUTH=SECRET", "redis-cli"], ["env", f"REDISCLI_AUTH={R}", "redis-cli"]),
    (["env", "MYSQL_PWD=SECRET", "mysql"], ["env", f"MYSQL_PWD={R}", "mysql"]),
    (["kubectl", "create", "secret", "generic", "db", "--from-literal=password=SECRET"], ["kubectl", "create", "secret", "generic", "db", f"--from-literal=password={R}"]),
    (["java", "-Djavax.net.ssl.keyStorePassword=SECRET", "-jar", "a.jar"], ["java", f"-Djavax.net.ssl.keyStorePassword={R}", "-jar", "a.jar"]),
    (["mount", "-t", "cifs", "//s/x", "/mnt", "-o", "username=u,password=SECRET,uid=1000"], ["mount", "-t", "cifs", "//s/x", "/mnt", "-o", f"username=u,password={R},uid=1000"]),
    (["psql", "host=db user=app password=SECRET dbname=shop"], ["psql", f"host=db user=app password={R} dbname=shop"]),
    (["curl", "https://api.example/v1?api_key=SECRET&q=1"], ["curl", f"https://api.example/v1?api_key={R}&q=1"]),
    (["az", "storage", "blob", "upload", "--connection-string", "AccountName=a;AccountKey=SECRET;EndpointSuffix=x"], ["az", "storage", "blob", "upload", "--connection-string", f"AccountName=a;AccountKey={R};EndpointSuffix=x"]),
    # --- headers ----------------------------------------------------------------------------------
    (["curl", "-H", "X-API-Key: SECRET", "https://x/"], ["curl", "-H", f"X-API-Key: {R}", "https://x/"]),
    (["curl", "-H", "X-Vault-Token: SECRET", "https://vault/v1/x"], ["curl", "-H", f"X-Vault-Token: {R}", "https://vault/v1/x"]),
    (["curl", "--header", "PRIVATE-TOKEN: SECRET", "https://gitlab/api"], ["curl", "--header", f"PRIVATE-TOKEN: {R}", "https://gitlab/api"]),
    (["curl", "-H", "Cookie: session=SECRET; theme=dark", "https://x/"], ["curl", "-H", f"Cookie: {R}", "https://x/"]),
    (["curl", "-b", "x", "-H", "Authorization: token SECRET", "https://x/"], ["curl", "-b", "x", "-H", f"Authorization: token {R}", "https://x/"]),
    (["git", "-c", "http.extraHeader=AUTHORIZATION: basic SECRET", "clone", "https://x/r"], ["git", "-c", f"http.extraHeader=AUTHORIZATION: basic {R}", "clone", "https://x/r"]),
    (["sh", "-c", "curl -H 'X-API-Key: SECRET' https://x/"], ["sh", "-c", f"curl -H 'X-API-Key: {R}' https://x/"]),
    (["http", "GET", "https://x/", "X-Auth-Token:SECRET"], ["http", "GET", "https://x/", f"X-Auth-Token:{R}"]),
    # --- JSON bodies ------------------------------------------------------------------------------
    (["curl", "-d", '{"password":"SECRET"}', "https://x/login"], ["curl", "-d", f'{{"password":"{R}"}}', "https://x/login"]),
    (["curl", "-d", '{"user": "bob", "api_key": "SECRET"}', "https://x/"], ["curl", "-d", f'{{"user": "bob", "api_key": "{R}"}}', "https://x/"]),
    (["ansible-playbook", "-e", '{"ansible_password": "SE\\"CRET"}', "p.yml"], ["ansible-playbook", "-e", f'{{"ansible_password": "{R}"}}', "p.yml"]),
    (["curl", "--data", '{"client_secret" : "SECRET"}', "https://x/"], ["curl", "--data", f'{{"client_secret" : "{R}"}}', "https://x/"]),
    # --- URLs -------------------------------------------------------------------------------------
    (["psql", "postgresql://app:SECRET@db:5432/shop"], ["psql", f"postgresql://app:{R}@db:5432/shop"]),
    (["mongosh", "mongodb+srv://u:SECRET@cluster0.example.net/db"], ["mongosh", f"mongodb+srv://u:{R}@cluster0.example.net/db"]),
    (["git", "clone", f"https://{GHP}@github.com/org/repo.git"], ["git", "clone", f"https://{R}@github.com/org/repo.git"]),
    (["git", "clone", f"https://oauth2:{GLPAT}@gitlab.com/g/r.git"], ["git", "clone", f"https://oauth2:{R}@gitlab.com/g/r.git"]),
    (["redis-cli", "-u", "rediss://default:SECRET@cache:6380"], ["redis-cli", "-u", f"rediss://default:{R}@cache:6380"]),
    # --- vendor token formats, bare ---------------------------------------------------------------
    (["aws", "configure", "set", "aws_access_key_id", AKIA], ["aws", "configure", "set", "aws_access_key_id", R]),
    (["tool", AWS_SECRET, "--profile", "aws-prod"], ["tool", R, "--profile", "aws-prod"]),
    (["gh", "auth", "status", GHP], ["gh", "auth", "status", R]),
    (["app", GHO], ["app", R]),
    (["app", GHS], ["app", R]),
    (["app", GHU], ["app", R]),
    (["app", GHR], ["app", R]),
    (["app", GPAT], ["app", R]),
    (["app", f"gl={GLPAT}"], ["app", f"gl={R}"]),
    (["slack-notify", XOXB, "#ops"], ["slack-notify", R, "#ops"]),
    (["app", XOXP], ["app", R]),
    (["curl", "-X", "POST", "https://hooks.slack.com/services/T000/B000/XXXXXXXX"], ["curl", "-X", "POST", f"https://hooks.slack.com/services/{R}"]),
    (["stripe", "charges", "list", "--api-key", SK_LIVE], ["stripe", "charges", "list", "--api-key", R]),
    (["pay", SK_LIVE], ["pay", R]),
    (["pay", RK_LIVE], ["pay", R]),
    (["curl", f"https://maps.googleapis.com/maps/api/geocode/json?address=x&k={AIZA}"], ["curl", f"https://maps.googleapis.com/maps/api/geocode/json?address=x&k={R}"]),
    (["app", HVS], ["app", R]),
    (["app", JWT], ["app", R]),
    (["python3", "chat.py", OPENAI], ["python3", "chat.py", R]),
    (["npm", "publish", f"--//registry.npmjs.org/:_authToken={NPM}"], ["npm", "publish", f"--//registry.npmjs.org/:_authToken={R}"]),
    (["twine", "upload", "-u", "__token__", "-p", PYPI, "dist/*"], ["twine", "upload", "-u", "__token__", "-p", R, "dist/*"]),
    (["app", SENDGRID], ["app", R]),
    (["app", DOP], ["app", R]),
    (["app", SHPAT], ["app", R]),
    (["app", HF], ["app", R]),
    (["app", DCKR], ["app", R]),
    (["ssh-add", "-", PEM], ["ssh-add", "-", PEM_R]),
    (["echo", f"key={SK_LIVE}"], ["echo", f"key={R}"]),
    # --- shell strings: in place, the rest kept ---------------------------------------------------
    (["sh", "-c", "PGPASSWORD=x psql -h db -c 'select 1'"], ["sh", "-c", f"PGPASSWORD={R} psql -h db -c 'select 1'"]),
    (["sh", "-c", "PGPASSWORD='a b' psql -h db"], ["sh", "-c", f"PGPASSWORD='{R}' psql -h db"]),
    (["bash", "-c", "export TOKEN=SECRET; ./deploy.sh"], ["bash", "-c", f"export TOKEN={R}; ./deploy.sh"]),
    (["sh", "-c", "sshpass -p SECRET ssh h uptime && echo ok"], ["sh", "-c", f"sshpass -p {R} ssh h uptime && echo ok"]),
    (["su", "-", "postgres", "-c", "psql 'postgres://a:SECRET@h/db'"], ["su", "-", "postgres", "-c", f"psql 'postgres://a:{R}@h/db'"]),
    (["ssh", "db1", "mysql -uroot -pSECRET -e 'show databases'"], ["ssh", "db1", f"mysql -uroot -p{R} -e 'show databases'"]),
    (["ssh", "-p", "2222", "db1", "mysql", "-pSECRET"], ["ssh", "-p", "2222", "db1", "mysql", f"-p{R}"]),
    (["sh", "-c", "curl -s -u admin:SECRET http://x | jq ."], ["sh", "-c", f"curl -s -u admin:{R} http://x | jq ."]),
    (["bash", "-c", 'docker login -u u -p "SECRET" reg && docker push reg/x'], ["bash", "-c", f'docker login -u u -p "{R}" reg && docker push reg/x']),
    (["sh", "-c", "redis-cli -a SECRET ping || exit 1"], ["sh", "-c", f"redis-cli -a {R} ping || exit 1"]),
    (["sh", "-c", "mysql --password='my secret' -e 'select 1'"], ["sh", "-c", f"mysql --password='{R}' -e 'select 1'"]),
    (["sh", "-c", "sudo -u app env API_KEY=SECRET ./run"], ["sh", "-c", f"sudo -u app env API_KEY={R} ./run"]),
    (["kubectl", "exec", "-it", "db-0", "--", "mysql", "-pSECRET"], ["kubectl", "exec", "-it", "db-0", "--", "mysql", f"-p{R}"]),
    (["kubectl", "exec", "db-0", "--", "sh", "-c", "mysql -pSECRET"], ["kubectl", "exec", "db-0", "--", "sh", "-c", f"mysql -p{R}"]),
    # --- harmless: must come through unchanged ----------------------------------------------------
    (["ssh", "-p", "2222", "host"], None),
    (["psql", "-p", "5432", "-U", "app"], None),
    (["mysql", "-u", "app"], None),
    (["mysql", "-u", "app", "-p", "shop"], None),  # -p alone prompts; "shop" is the database
    (["mysql", "--port=3306", "-P", "3306", "-h", "db"], None),
    (["docker", "run", "-p", "8080:80", "nginx"], None),
    (["docker", "run", "-p8080:80", "--rm", "nginx"], None),
    (["app", "--password-file=/etc/x"], None),
    (["app", "--password-file", "/etc/x"], None),
    (["grep", "-r", "password_file", "."], None),
    (["docker", "login", "--password-stdin", "-u", "bob"], None),
    (["curl", "-u", "user", "https://x/"], None),
    (["ls", "-la", "/tmp"], None),
    (["/usr/bin/python3", "-m", "pytest", "tests/test_x.py", "-k", "foo"], None),
    (["sh", "-c", "make -j2 all"], None),
    (["cat", "/etc/security/pwquality.conf"], None),
    (["vim", "src/auth/token_store.py"], None),
    (["app", "--no-password"], None),
    (["app", "--token-file", "/run/secrets/t"], None),
    (["app", "--tokens=4", "--secret-name=db-creds"], None),
    (["ansible-playbook", "--ask-become-pass", "site.yml"], None),
    (["passwd", "bob"], None),
    (["ssh-keygen", "-t", "ed25519", "-f", "/home/bob/.ssh/id_ed25519"], None),
    (["gpg", "--passphrase-file", "/root/p", "-d", "x.gpg"], None),
    (["gpg", "--passphrase-fd", "0", "-d", "x.gpg"], None),
    (["openssl", "pkcs12", "-passin", "env:P12_PASS", "-in", "a.p12"], None),
    (["openssl", "rsa", "-passin", "file:/etc/pw", "-in", "k.pem"], None),
    (["curl", "--key", "/etc/ssl/client.key", "--cert", "c.pem", "https://x/"], None),
    (["git", "clone", "git@github.com:org/repo.git"], None),
    (["git", "log", "--format=%H", "-n", "1"], None),
    (["git", "checkout", "3f1e2a9c0b7d4e5f6a7b8c9d0e1f2a3b4c5d6e7f"], None),
    (["aws", "s3", "cp", "s3://bucket/key.txt", "."], None),
    (["aws", "ec2", "describe-instances", "--instance-ids", "i-0abcd1234ef567890"], None),
    (["curl", "https://user@host/"], None),
    (["curl", "https://example.com:8443/a?b=1&c=2"], None),
    (["kubectl", "get", "secrets", "-n", "kube-system"], None),
    (["kubectl", "create", "secret", "generic", "x", "--from-file=key=./k"], None),
    (["docker", "build", "--secret", "id=npmrc,src=/home/b/.npmrc", "."], None),
    (["systemctl", "restart", "keyd.service"], None),
    (["journalctl", "-u", "sshd", "--since", "10:00"], None),
    (["env", "PWD=/home/bob", "HOME=/home/bob", "ls"], None),
    (["tar", "-czf", "backup-keys.tgz", "/etc/ssh"], None),
    (["echo", "token", "password", "secret"], None),
    (["find", "/", "-name", "*.key", "-o", "-name", "*password*"], None),
    (["sshpass", "-e", "ssh", "host"], None),
    (["redis-cli", "--askpass", "-h", "cache"], None),
    (["ldapsearch", "-x", "-W", "-D", "cn=admin"], None),
    (["sh", "-c", "a=b c=d make test"], None),
    (["bash", "-c", "for f in *.log; do gzip -9 $f; done"], None),
    (["ssh", "host", "uptime"], None),
    (["nginx", "-g", "daemon off;"], None),
    (["curl", "-sSf", "-o", "/dev/null", "https://api.github.com/zen"], None),
    (["python3", "-c", "print('hello')"], None),
    (["smbclient", "-L", "srv", "-U", "bob"], None),
]  # fmt: skip
