/ A telemetry gateway: publishes sensor readings on a timer to a central broker over TLS with a client
/ certificate (mutual TLS), one batch per tick, and prints the connection's counters.
/ Configure with environment variables:
/   QMQTT_URL    broker address             (default ssl://localhost:8883)
/   QMQTT_CA     CA certificate (PEM)       trustStore
/   QMQTT_CERT   client certificate (PEM)   keyStore
/   QMQTT_KEY    client private key (PEM)   privateKey
/   QMQTT_TOPIC  topic prefix               (default gateway/telemetry)
/   QMQTT_TICKS  ticks before stopping      (default 50; 0: run for ever, as the systemd service does;
/                                            each tick sends one reading per sensor)
/   QMQTT_CLIENT_ID  MQTT client id         (default telemetry-<host>-<pid>)
/ Run:  q telemetry.q   (mqtt.q is loaded from ../mqtt.q in the source tree, else from $QHOME/mqtt.q as
/ deploy/install.sh installs it)
$[()~key`:../mqtt.q;system"l ",getenv[`QHOME],"/mqtt.q";system"l ../mqtt.q"];

env:{$[count v:getenv x;v;y]}
url:`$env[`QMQTT_URL;"ssl://localhost:8883"]
topic:env[`QMQTT_TOPIC;"gateway/telemetry"]
ticks:"J"$env[`QMQTT_TICKS;"50"]
sensors:`temp`humidity`pressure`vibration

// TLS options: KX's names. Host names are verified (qmqtt's default); reliable 0b is not needed, QoS 1
// messages stream with up to 100 in flight, and .mqtt.pubbatch queues a tick's readings in one call.
opts:`trustStore`keyStore`privateKey!`$env[;""] each `QMQTT_CA`QMQTT_CERT`QMQTT_KEY
opts:(where 0<count each string opts)#opts
opts,:`keepAliveInterval`queueMessages`fullPolicy!(30;100000;`dropOldest)

// Count acknowledgements and disconnections
acked:0
.mqtt.msgsent:{acked+:1;}
.mqtt.disconn:{-1"disconnected: ",x;}

cid:`$env[`QMQTT_CLIENT_ID;"telemetry-",string[.z.h],"-",string .z.i]
.mqtt.conn[url;cid;opts]
-1"connected to ",string[url],"; publishing to ",topic,"/<sensor>";

// One reading per sensor: "<timestamp>,<value>"
reading:{string[.z.p],",",string x+0.1*first 1?100}
base:`temp`humidity`pressure`vibration!20 45 1013 0f
n:0
.z.ts:{
  tokens:.mqtt.pubbatch[`$topic,/:"/",/:string sensors;reading each base sensors;1;0b];
  n+:1;
  if[(ticks>0)&n>=ticks;
    system"t 0";
    -1"sent ",string[n*count sensors]," readings, last token ",string last tokens;
    show .mqtt.stats[];
    -1"acknowledged so far: ",string acked;
    ]}

-1"publishing ",string[count sensors]," readings every 100ms for ",string[ticks]," ticks";
\t 100
